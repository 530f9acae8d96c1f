-- GCRA over one key, on Redis's own clock, with lease batching.
--
-- KEYS[1]  the limit's key; its value is the theoretical arrival time (TAT) in
--          microseconds of Redis's clock, as an integer.
-- ARGV[1]  emission interval T in microseconds (may have a fraction)
-- ARGV[2]  burst (tokens)
-- ARGV[3]  want: the most tokens to take (the lease size), >= need
-- ARGV[4]  need: the fewest tokens worth taking (the request's charge), >= 0
-- ARGV[5]  tokens to give back from an earlier lease, >= 0
-- ARGV[6]  that lease's end (the TAT right after it was taken), microseconds
-- ARGV[7]  tokens to charge whatever is left (a token budget's overspend), >= 0;
--          never more than one burst ahead of now
--
-- Returns {granted, remaining, reset_us, retry_us, end_us, returned}: granted is
-- 0 when fewer than `need` tokens are available (then retry_us is the wait), else
-- between need and want; end_us is the TAT after the grant; returned is the whole
-- tokens the give-back returned.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local give_back = tonumber(ARGV[5])
local lease_end = tonumber(ARGV[6])
local force = tonumber(ARGV[7] or '0')
local window = interval * burst

local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local changed = false

-- Give back only the part of the old lease still ahead of now, and never move
-- the TAT before now: never more than if those tokens had not been taken.
local returned = 0
if give_back > 0 then
  local refund = math.min(give_back * interval, lease_end - now, tat - now)
  if refund > 0 then
    tat = tat - refund
    returned = math.floor(refund / interval)
    changed = true
  end
end

-- Charge an overspend whatever is left, but never past one burst from now.
if force > 0 then
  tat = math.min(math.max(tat, now) + force * interval, math.max(now + window, tat))
  changed = true
end

local base = math.max(tat, now)
local available = math.floor((now + window - base) / interval)
local granted = 0
local retry = 0
if need > 0 and available >= need then
  granted = math.min(want, available)
  base = math.ceil(base + granted * interval)
  changed = true
elseif need > 0 then
  retry = math.ceil(base + need * interval - (now + window))
end

if changed then
  local ttl = math.ceil((base - now) / 1000) + 1
  if base > now then
    redis.call('SET', KEYS[1], string.format('%.0f', base), 'PX', ttl)
  else
    redis.call('DEL', KEYS[1])
  end
end

local remaining = math.floor((now + window - math.max(base, now)) / interval)
if remaining < 0 then remaining = 0 end
local reset = math.max(base - now, 0)
return {granted, remaining, math.ceil(reset), retry, string.format('%.0f', base), returned}
