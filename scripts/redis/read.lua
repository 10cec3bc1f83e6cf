-- wsrouter read.lua: a topic's epoch, last offset and the entries after an
-- offset, read atomically (used by the bridge; handy for debugging).
--
--   redis-cli --eval scripts/redis/read.lua ws:u1 , SINCE [COUNT]
--
-- KEYS[1]  the topic's Redis channel (as for publish.lua)
-- ARGV[1]  return entries with offset > SINCE (0 = from the start)
-- ARGV[2]  at most COUNT entries, 0..10000 (default 100; 0 = only the
--          epoch and last offset)
-- Returns { epoch, last, offset1, payload1, offset2, payload2, ... } with
-- epoch "" and last 0 when the topic has no history.

local channel = KEYS[1]
local since = tonumber (ARGV[1] or '')
local count = tonumber (ARGV[2] or '100')
if not channel or not since or since < 0 or since ~= math.floor (since)
or not count or count < 0 or count > 10000 or count ~= math.floor (count) then
    return redis.error_reply ('ERR wsr read: usage: KEYS[1]=channel ARGV[1]=since [ARGV[2]=count]')
end
local m = redis.call ('HMGET', '{' .. channel .. '}:m', 'e', 'o')
if not m[1] or not m[2] then
    return { '', 0 }
end
local out = { m[1], tonumber (m[2]) }
if count > 0 and since < out[2] then
    local entries = redis.call ('XRANGE', '{' .. channel .. '}:s',
                                string.format ('%d-0', since + 1), '+', 'COUNT', count)
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
