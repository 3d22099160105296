-- mcp-authz rate limits: the GCRA decision of `evaluate` in src/ratelimit.rs, line for line,
-- in one atomic step. Time is Redis's own clock, so replicas need not agree on theirs.
-- KEYS: the buckets: hard ones first, then (when ARGV[2] == '1') reserved and global.
-- ARGV[1]: number of hard buckets. ARGV[2]: '1' with a fair pair.
-- ARGV[2i+1], ARGV[2i+2]: interval and horizon (microseconds) of KEYS[i].
-- Returns {allowed, binding bucket (0-based), remaining, reset_us, retry_us}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local hard = tonumber(ARGV[1])
local fair = ARGV[2] == '1'
local tat, iv, hz, ok, new, rem, reset, retry = {}, {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  tat[i] = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  iv[i] = tonumber(ARGV[2 * i + 1])
  hz[i] = tonumber(ARGV[2 * i + 2])
  local nt = math.max(tat[i], now) + iv[i]
  if nt - now <= hz[i] then
    ok[i], new[i], rem[i], reset[i], retry[i] = true, nt, math.floor((now + hz[i] - nt) / iv[i]), nt - now, 0
  else
    ok[i], new[i], rem[i], reset[i], retry[i] = false, tat[i], 0, nt - now - hz[i], nt - now - hz[i]
  end
end
local worst = nil
for i = 1, hard do
  if not ok[i] and (worst == nil or retry[i] > retry[worst]) then worst = i end
end
if worst then return {0, worst - 1, 0, reset[worst], retry[worst]} end
local writes, charged = {}, {}
for i = 1, hard do
  writes[i] = new[i]
  charged[#charged + 1] = i
end
if fair then
  local r, g = hard + 1, hard + 2
  if ok[r] then
    writes[r] = new[r]
    writes[g] = math.min(math.max(tat[g], now) + iv[g], now + 2 * hz[g])
    charged[#charged + 1] = r
  elseif ok[g] then
    writes[g] = new[g]
    charged[#charged + 1] = g
  else
    local i = r
    if retry[g] < retry[r] then i = g end
    return {0, g - 1, 0, reset[i], retry[i]}
  end
end
for i, v in pairs(writes) do
  redis.call('SET', KEYS[i], string.format('%.0f', v), 'PX', string.format('%.0f', math.floor((v - now) / 1000) + 1000))
end
local best = charged[1]
if best == nil then return {1, 0, 0, 0, 0} end
for _, i in ipairs(charged) do
  if rem[i] < rem[best] then best = i end
end
return {1, best - 1, rem[best], reset[best], 0}
