-- Unknown-kid storm: every request carries a token whose header names a random kid.
-- The payload names the gateway's issuer (env BENCH_ISS) so the gateway reaches key lookup;
-- the signature is junk: the kid is unknown, so no signature is ever checked.
dofile(os.getenv("BENCH_REPORT_LUA"))  -- the shared done() that prints the JSON summary

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

local function b64url(data)
  local out = {}
  local len = #data
  for i = 1, len, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chunk = {
      b64chars:sub(math.floor(n / 262144) % 64 + 1, math.floor(n / 262144) % 64 + 1),
      b64chars:sub(math.floor(n / 4096) % 64 + 1, math.floor(n / 4096) % 64 + 1),
    }
    if b then
      local k = math.floor(n / 64) % 64 + 1
      chunk[3] = b64chars:sub(k, k)
    end
    if c then
      local k = n % 64 + 1
      chunk[4] = b64chars:sub(k, k)
    end
    out[#out + 1] = table.concat(chunk)
  end
  return table.concat(out)
end

local payload
local counter = 0

init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  local iss = os.getenv("BENCH_ISS") or "http://127.0.0.1"
  local now = os.time()
  payload = b64url(string.format(
    '{"iss":"%s","sub":"user_storm","iat":%d,"nbf":%d,"exp":%d}', iss, now, now - 5, now + 3600))
end

request = function()
  counter = counter + 1
  local kid = string.format("ins_storm%08x%06x", math.random(0, 0x7fffffff), counter % 0xffffff)
  local header = b64url('{"alg":"RS256","typ":"JWT","kid":"' .. kid .. '"}')
  local token = header .. "." .. payload .. ".c2lnbmF0dXJl"
  return wrk.format("GET", "/api/storm", { ["Authorization"] = "Bearer " .. token })
end
