-- wsrouter presence.lua: who is connected where, kept by the bridges in Redis.
--
--   KEYS[1]  the key prefix, a hash tag so that every presence key shares
--            one cluster slot: "{wsp}"
--   ARGV[1]  the operation, then its arguments:
--     beat N1 N2 ...                      these nodes are alive (now, Redis' clock)
--     connect NODE SESSION USER CHANNELS SINCE INFO
--     disconnect NODE SESSION USER CHANNELS SINCE
--     reap STALE_MS                       forget nodes silent longer than that;
--                                         returns { node, member, ... } forgotten
--     user USER ALIVE_MS                  { session, info, ... } on live nodes
--     channel CHANNEL ALIVE_MS LIMIT      { count, session, info, ... (LIMIT) }
--   CHANNELS is comma-joined, SINCE the session's start (ms), INFO its JSON.
--
-- Keys: P:nodes (hash node -> last beat, ms), P:n:NODE (set of
-- "SESSION USER CHANNELS SINCE": ids have no spaces), P:u:USER and P:c:CHANNEL (hash session ->
-- INFO; INFO holds the node, so entries of dead nodes are filtered at read
-- and removed by the reap).

local p = KEYS[1]
local op = ARGV[1]
local t = redis.call ('TIME')
local now = tonumber (t[1]) * 1000 + math.floor (tonumber (t[2]) / 1000)

local function split (csv)
    local out = {}
    for item in string.gmatch (csv or '', '[^,]+') do
        out[#out + 1] = item
    end
    return out
end

local function alive_nodes (alive_ms)
    local beats = redis.call ('HGETALL', p .. ':nodes')
    local alive = {}
    for i = 1, #beats, 2 do
        if now - tonumber (beats[i + 1]) <= alive_ms then
            alive[beats[i]] = true
        end
    end
    return alive
end

local function node_of (info)
    return string.match (info, '"node":"([^"]*)"')
end

local function forget (node, session, user, channels)
    redis.call ('HDEL', p .. ':u:' .. user, session)
    for _, c in ipairs (split (channels)) do
        redis.call ('HDEL', p .. ':c:' .. c, session)
    end
end

if op == 'beat' then
    for i = 2, #ARGV do
        redis.call ('HSET', p .. ':nodes', ARGV[i], now)
    end
    return now
elseif op == 'connect' then
    local node, session, user, channels, since, info =
        ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
    redis.call ('HSET', p .. ':u:' .. user, session, info)
    for _, c in ipairs (split (channels)) do
        redis.call ('HSET', p .. ':c:' .. c, session, info)
    end
    redis.call ('SADD', p .. ':n:' .. node, session .. ' ' .. user .. ' ' .. channels .. ' ' .. since)
    redis.call ('HSET', p .. ':nodes', node, now)
    return 1
elseif op == 'disconnect' then
    local node, session, user, channels, since = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
    forget (node, session, user, channels)
    redis.call ('SREM', p .. ':n:' .. node, session .. ' ' .. user .. ' ' .. channels .. ' ' .. since)
    return 1
elseif op == 'reap' then
    local stale = tonumber (ARGV[2])
    local beats = redis.call ('HGETALL', p .. ':nodes')
    local out = {}
    for i = 1, #beats, 2 do
        local node = beats[i]
        if now - tonumber (beats[i + 1]) > stale then
            for _, m in ipairs (redis.call ('SMEMBERS', p .. ':n:' .. node)) do
                local session, user, channels = string.match (m, '^(%S+) (%S+) (%S*) ')
                if session then
                    forget (node, session, user, channels)
                    out[#out + 1] = node
                    out[#out + 1] = m
                end
            end
            redis.call ('DEL', p .. ':n:' .. node)
            redis.call ('HDEL', p .. ':nodes', node)
        end
    end
    return out
elseif op == 'user' then
    local alive = alive_nodes (tonumber (ARGV[3]))
    local entries = redis.call ('HGETALL', p .. ':u:' .. ARGV[2])
    local out = {}
    for i = 1, #entries, 2 do
        if alive[node_of (entries[i + 1])] then
            out[#out + 1] = entries[i]
            out[#out + 1] = entries[i + 1]
        end
    end
    return out
elseif op == 'channel' then
    local alive = alive_nodes (tonumber (ARGV[3]))
    local limit = tonumber (ARGV[4])
    local entries = redis.call ('HGETALL', p .. ':c:' .. ARGV[2])
    local out = { 0 }
    for i = 1, #entries, 2 do
        if alive[node_of (entries[i + 1])] then
            out[1] = out[1] + 1
            if out[1] <= limit then
                out[#out + 1] = entries[i]
                out[#out + 1] = entries[i + 1]
            end
        end
    end
    return out
end
return redis.error_reply ('ERR wsr presence: unknown operation')
