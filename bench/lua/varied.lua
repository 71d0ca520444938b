-- Every request a different path (/api/varied/1, /2, ...), with wrk's own headers (the
-- token). The static upstream answers each with a head of its own (X-Path) and a body whose
-- length follows the path: nothing repeats, so no memo of heads ever helps.
dofile(os.getenv("BENCH_REPORT_LUA"))  -- the shared done() that prints the JSON summary

local counter = 0

request = function()
  counter = counter + 1
  return wrk.format(nil, "/api/varied/" .. counter)
end
