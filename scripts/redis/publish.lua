-- wsrouter publish.lua: append a message to a topic's history and publish it
-- with its offset and epoch, in one atomic step. Backends run it instead of
-- PUBLISH when clients should be able to recover what they missed:
--
--   redis-cli --eval scripts/redis/publish.lua ws:u1 , 'payload' [size [ttl [cmd [nonce [meta]]]]]
--
-- KEYS[1]  the topic's Redis channel as named by the templates (ws:{user_id})
-- ARGV[1]  the payload, any bytes
-- ARGV[2]  history size in entries, 1..1000000 (default 100; trimming is
--          approximate: at least this many are kept)
-- ARGV[3]  history TTL in seconds, 1..2592000 (default 300), renewed by
--          every append
-- ARGV[4]  PUBLISH (default) or SPUBLISH (sharded Pub/Sub, Redis Cluster)
-- ARGV[5]  optional epoch nonce, 1..16 of [0-9A-Za-z] (wsrouter passes a
--          random one); it only matters when a new epoch is made
-- ARGV[6]  TTL in seconds of the epoch and offset, 1..31536000 (default the
--          larger of 86400 and ARGV[3]): they outlive the entries so that a
--          client whose position is the last offset still recovers (with
--          nothing to replay) after the entries expired
-- Empty strings mean the default.
--
-- Keys, all hash-tagged with the channel so that they share its cluster slot:
--   {C}:s  stream; entry id "OFFSET-0", field "d" = payload
--   {C}:m  hash; "e" = epoch, "o" = last offset
-- The epoch is made new, and offsets start again at 1, whenever the hash is
-- missing (never used, expired, flushed, Redis restarted without
-- persistence): readers compare epochs to detect that history was lost.
-- read.lua makes the hash too, so that a topic has an epoch from the first
-- time a client asks for its position.
--
-- Published on C: "\255WSR\1" .. OFFSET .. ":" .. EPOCH .. ":" .. payload
-- (byte 0xFF never starts UTF-8 text; see wsr_history.h for the decoder).
-- Returns { offset, epoch, receivers }.

local channel = KEYS[1]
local payload = ARGV[1]
if not channel or not payload then
    return redis.error_reply('ERR wsr publish: usage: KEYS[1]=channel ARGV[1]=payload')
end

local function arg (i, default, low, high)
    local v = ARGV[i]
    if v == nil or v == '' then
        return default
    end
    local n = tonumber (v)
    if not n or n ~= math.floor (n) or n < low or n > high then
        return nil
    end
    return n
end
local size = arg (2, 100, 1, 1000000)
local ttl = arg (3, 300, 1, 2592000)
local meta_ttl = ttl and arg (6, math.max (86400, ttl), 1, 31536000)
if not size or not ttl or not meta_ttl then
    return redis.error_reply('ERR wsr publish: size or ttl out of range')
end
local cmd = ARGV[4]
if cmd == nil or cmd == '' then
    cmd = 'PUBLISH'
end
cmd = string.upper (cmd)
if cmd ~= 'PUBLISH' and cmd ~= 'SPUBLISH' then
    return redis.error_reply('ERR wsr publish: command must be PUBLISH or SPUBLISH')
end
local nonce = ARGV[5] or ''
if nonce ~= '' and not string.match (nonce, '^[0-9A-Za-z]+$') or #nonce > 16 then
    return redis.error_reply('ERR wsr publish: nonce must be 1..16 of [0-9A-Za-z]')
end

local stream = '{' .. channel .. '}:s'
local meta = '{' .. channel .. '}:m'
local m = redis.call ('HMGET', meta, 'e', 'o')
local epoch = m[1]
if not epoch or not m[2] then
    --  A new epoch: whatever is left of an older stream belongs to another one
    redis.call ('DEL', stream, meta)
    local t = redis.call ('TIME')
    epoch = string.format ('%x%05x', tonumber (t[1]), tonumber (t[2]))
    if nonce ~= '' then
        epoch = epoch .. '-' .. nonce
    end
    redis.call ('HSET', meta, 'e', epoch)
end
local offset = redis.call ('HINCRBY', meta, 'o', 1)
local id = string.format ('%d-0', offset)
redis.call ('XADD', stream, 'MAXLEN', '~', size, id, 'd', payload)
redis.call ('EXPIRE', stream, ttl)
redis.call ('EXPIRE', meta, meta_ttl)
local framed = '\255WSR\1' .. string.format ('%d', offset) .. ':' .. epoch .. ':' .. payload
local receivers = redis.call (cmd, channel, framed)
return { offset, epoch, receivers }
