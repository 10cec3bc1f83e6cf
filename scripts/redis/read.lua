-- wsrouter read.lua: a topic's epoch, last offset and the entries after an
-- offset, read atomically (used by the bridge; handy for debugging).
--
--   redis-cli --eval scripts/redis/read.lua ws:u1 , SINCE [COUNT [META [NONCE]]]
--
-- KEYS[1]  the topic's Redis channel (as for publish.lua)
-- ARGV[1]  return entries with offset > SINCE (0 = from the start)
-- ARGV[2]  at most COUNT entries, 0..10000 (default 100; 0 = only the
--          epoch and last offset)
-- ARGV[3]  optional: TTL in seconds of the epoch and offset (as publish.lua's
--          ARGV[6]). Given, a topic without them gets a new epoch at offset
--          0 (so that its position is known before its first message) and
--          the TTL is renewed. Not given, nothing is written.
-- ARGV[4]  optional epoch nonce, as publish.lua's ARGV[5]
-- Returns { epoch, last, offset1, payload1, offset2, payload2, ... } with
-- epoch "" and last 0 when the topic has no epoch (and ARGV[3] is absent).

local channel = KEYS[1]
local since = tonumber (ARGV[1] or '')
local count = tonumber (ARGV[2] or '100')
local meta_ttl = tonumber (ARGV[3] or '')
local nonce = ARGV[4] or ''
if not channel or not since or since < 0 or since ~= math.floor (since)
or not count or count < 0 or count > 10000 or count ~= math.floor (count)
or (ARGV[3] and ARGV[3] ~= '' and (not meta_ttl or meta_ttl < 1 or meta_ttl > 31536000))
or (nonce ~= '' and not string.match (nonce, '^[0-9A-Za-z]+$') or #nonce > 16) then
    return redis.error_reply ('ERR wsr read: usage: KEYS[1]=channel ARGV[1]=since '
                              .. '[ARGV[2]=count [ARGV[3]=meta-ttl [ARGV[4]=nonce]]]')
end
local stream = '{' .. channel .. '}:s'
local meta = '{' .. channel .. '}:m'
local m = redis.call ('HMGET', meta, 'e', 'o')
if (not m[1] or not m[2]) and meta_ttl then
    --  As publish.lua does for a new epoch
    redis.call ('DEL', stream, meta)
    local t = redis.call ('TIME')
    local epoch = string.format ('%x%05x', tonumber (t[1]), tonumber (t[2]))
    if nonce ~= '' then
        epoch = epoch .. '-' .. nonce
    end
    redis.call ('HSET', meta, 'e', epoch, 'o', 0)
    m = { epoch, '0' }
end
if not m[1] or not m[2] then
    return { '', 0 }
end
if meta_ttl then
    redis.call ('EXPIRE', meta, meta_ttl)
end
local out = { m[1], tonumber (m[2]) }
if count > 0 and since < out[2] then
    local entries = redis.call ('XRANGE', stream, string.format ('%d-0', since + 1), '+',
                                'COUNT', count)
    for _, e in ipairs (entries) do
        local offset = tonumber (string.match (e[1], '^(%d+)-'))
        local fields = e[2]
        for i = 1, #fields, 2 do
            if fields[i] == 'd' then
                out[#out + 1] = offset
                out[#out + 1] = fields[i + 1]
            end
        end
    end
end
return out
