-- wrk script: each request carries the next of the bearer tokens listed in
-- $TOKENS_FILE (one per line), so the cache sees a pool of distinct tokens.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  tokens[#tokens + 1] = line
end
local i = math.random(#tokens)
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
