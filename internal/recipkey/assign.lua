-- The redis_events plugin's recipient-key bookkeeping (process_payload_recip_key), atomic, for a
-- batch of messages.
--
-- KEYS: recip_key_uid_map, then the list of each message (standalone only).
-- ARGV: uid_recip_keys_map, pending counts, last access map, round robin key, now (local wall
-- clock as Unix seconds), stale seconds, "1" to RPUSH each entry after its bookkeeping (standalone)
-- or "0" (cluster: the lists live on other nodes), then the recipient key and entry of each message.
-- Reply: the owning uid of each message, nil when no instance has registered.
--
-- Redis blocks while a script runs, so the work per message is kept to a few commands whatever the
-- number of keys an instance holds: a key is appended to an instance's base64 list by re-encoding
-- only the list's last bytes, and only the rare move of a silent instance's keys reads whole lists.
local kmap = KEYS[1]
local ukeys, pending, access, rr = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, stale, push = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
local n = (#ARGV - 7) / 2

local byte, char, sub, concat = string.byte, string.char, string.sub, table.concat
local band, rshift = bit.band, bit.rshift

-- URL-safe base64 with padding, as Python's urlsafe_b64encode; decoding takes both alphabets.
local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
local enc, dec
local function tables()
  enc, dec = {}, {}
  for i = 0, 63 do
    enc[i] = sub(alphabet, i + 1, i + 1)
    dec[byte(alphabet, i + 1)] = i
  end
  dec[byte('+')], dec[byte('/')] = 62, 63
end

local function b64enc(s)
  if not enc then tables() end
  local out, j, len = {}, 0, #s
  for i = 1, len - 2, 3 do
    local a, b, c = byte(s, i, i + 2)
    local v = a * 65536 + b * 256 + c
    j = j + 1
    out[j] = enc[rshift(v, 18)] .. enc[band(rshift(v, 12), 63)] .. enc[band(rshift(v, 6), 63)] .. enc[band(v, 63)]
  end
  local r = len % 3
  if r == 1 then
    local v = byte(s, len) * 65536
    out[j + 1] = enc[rshift(v, 18)] .. enc[band(rshift(v, 12), 63)] .. '=='
  elseif r == 2 then
    local a, b = byte(s, len - 1, len)
    local v = a * 65536 + b * 256
    out[j + 1] = enc[rshift(v, 18)] .. enc[band(rshift(v, 12), 63)] .. enc[band(rshift(v, 6), 63)] .. '='
  end
  return concat(out)
end

local function b64dec(s)
  if not dec then tables() end
  s = string.gsub(s, '[^%w%-_%+/]', '')
  local out, j, len, i = {}, 0, #s, 1
  while i + 3 <= len do
    local a, b, c, d = byte(s, i, i + 3)
    local v = (dec[a] or 0) * 262144 + (dec[b] or 0) * 4096 + (dec[c] or 0) * 64 + (dec[d] or 0)
    j = j + 1
    out[j] = char(rshift(v, 16), band(rshift(v, 8), 255), band(v, 255))
    i = i + 4
  end
  local r = len - i + 1
  if r == 2 then
    local a, b = byte(s, i, i + 1)
    out[j + 1] = char(rshift((dec[a] or 0) * 262144 + (dec[b] or 0) * 4096, 16))
  elseif r == 3 then
    local a, b, c = byte(s, i, i + 2)
    local v = (dec[a] or 0) * 262144 + (dec[b] or 0) * 4096 + (dec[c] or 0) * 64
    out[j + 1] = char(rshift(v, 16), band(rshift(v, 8), 255))
  end
  return concat(out)
end

-- A key as Python's json.dumps writes it (cjson escapes '/', Python does not).
local function json_str(k)
  return (string.gsub(cjson.encode(k), '\\/', '/'))
end

-- The keys of an instance, read whole: only the rare paths do this.
local function list_keys(uid)
  local v = redis.call('HGET', ukeys, uid)
  if not v then return {} end
  local ok, list = pcall(cjson.decode, b64dec(v))
  if not ok or type(list) ~= 'table' then return {} end
  return list
end

local function list_put(uid, list)
  local parts = {}
  for i, k in ipairs(list) do parts[i] = json_str(k) end
  redis.call('HSET', ukeys, uid, b64enc('[' .. concat(parts, ', ') .. ']'))
end

-- Appends k to an instance's list. The base64 of the text up to its last complete 3-byte group
-- before the closing ']' stays as it is; only the bytes after it are re-encoded with the new item.
local function list_append(uid, k)
  local v = redis.call('HGET', ukeys, uid)
  if v and #v > 12 and #v % 4 == 0 then
    local pad = 0
    if sub(v, -2) == '==' then pad = 2 elseif sub(v, -1) == '=' then pad = 1 end
    local len = #v / 4 * 3 - pad
    local keep = math.floor((len - 1) / 3)
    local tail = b64dec(sub(v, 4 * keep + 1))
    if sub(tail, -1) == ']' then
      redis.call('HSET', ukeys, uid, sub(v, 1, 4 * keep) .. b64enc(sub(tail, 1, -2) .. ', ' .. json_str(k) .. ']'))
      return
    end
  end
  -- Short or unusual: read and write it whole.
  local list = list_keys(uid)
  for _, x in ipairs(list) do
    if x == k then return end
  end
  list[#list + 1] = k
  list_put(uid, list)
end

-- Round robin over the registered instances, as the plugin's get_new_valid_uid: read once per
-- call, advanced here, written back at the end.
local uids, it, rr_moved
local function load_uids()
  if not uids then
    uids = redis.call('HKEYS', ukeys)
    it = tonumber(redis.call('GET', rr) or '0') or 0
  end
end

local function next_uid(ignore)
  load_uids()
  local list = uids
  if ignore and #uids > 1 then
    list = {}
    for _, u in ipairs(uids) do
      if u ~= ignore then list[#list + 1] = u end
    end
  end
  if #list == 0 then return nil end
  local uid = list[it + 1] or list[1]
  it = it + 1
  if it >= #list then it = 0 end
  rr_moved = true
  return uid
end

local function others(uid)
  load_uids()
  for _, u in ipairs(uids) do
    if u ~= uid then return true end
  end
  return false
end

local function stamp(s)
  local y, mo, d, h, mi, se = string.match(s, '^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return (era * 146097 + doe - 719468) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(se)
end

-- HMGET of many fields, in chunks that unpack can take.
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, 1000 do
    local got = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, #got do out[i + j - 1] = got[j] end
  end
  return out
end

-- The owners of every key of the batch in one read; every later write of the map goes through
-- set_owner, so the memo stays what the map holds.
local owner = {}
if n > 0 then
  local ks = {}
  for i = 1, n do ks[i] = ARGV[6 + 2 * i] end
  local got = hmget(kmap, ks)
  for i = 1, n do owner[ks[i]] = got[i] end
end
local function set_owner(k, uid)
  redis.call('HSET', kmap, k, uid)
  owner[k] = uid
end

-- The script never writes last access, so one read per instance and call is enough.
local stamps = {}
local function silent(uid)
  local t = stamps[uid]
  if t == nil then
    local seen = redis.call('HGET', access, uid)
    t = seen and stamp(seen) or false
    stamps[uid] = t
  end
  return not t or now - t >= stale
end

-- Moves every key of a silent instance with messages pending to the others, round robin, with
-- their pending counts, and forgets the instance. Returns the new owner of key.
local function move_keys(old, key)
  local list = list_keys(old)
  local fields = {}
  for i, k in ipairs(list) do fields[i] = old .. '_' .. k end
  local counts = hmget(pending, fields)
  local busy = false
  for i = 1, #list do
    local c = tonumber(counts[i] or '')
    if c and c >= 1 then busy = true break end
  end
  -- With no other instance the reference moves each key to the same instance: nothing changes.
  if not busy or not others(old) then return old end
  local result = old
  for i, k in ipairs(list) do
    local new = next_uid(old)
    set_owner(k, new)
    list_append(new, k)
    if counts[i] then redis.call('HINCRBY', pending, new .. '_' .. k, tonumber(counts[i]) or 0) end
    if k == key then result = new end
  end
  for i = 1, #fields, 1000 do
    redis.call('HDEL', pending, unpack(fields, i, math.min(i + 999, #fields)))
  end
  redis.call('HDEL', ukeys, old)
  for i, u in ipairs(uids) do
    if u == old then table.remove(uids, i) break end
  end
  return result
end

local function assign(key)
  local uid = owner[key]
  if not uid then
    uid = next_uid(nil)
    if not uid then return false end
    set_owner(key, uid)
    list_append(uid, key)
    redis.call('HSET', pending, uid .. '_' .. key, 0)
  end
  if silent(uid) then
    uid = move_keys(uid, key)
  end
  redis.call('HINCRBY', pending, uid .. '_' .. key, 1)
  return uid
end

-- One message after another, in the order given; a message whose key no instance can take
-- gets false (nil in the reply) and is not pushed.
local out = {}
for i = 1, n do
  local uid = assign(ARGV[6 + 2 * i])
  out[i] = uid
  if uid and push then redis.call('RPUSH', KEYS[1 + i], ARGV[7 + 2 * i]) end
end
if rr_moved then redis.call('SET', rr, it) end
return out
