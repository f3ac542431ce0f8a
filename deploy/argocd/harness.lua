-- Runs an Argo CD health check the way Argo CD does: the object as the global `obj`, the
-- script's return value as the health. Reads the object as JSON on standard input, prints
-- the health as JSON.   lua5.1 harness.lua health.lua < object.json
local cjson = require("cjson")
cjson.decode_null_as_lightuserdata = false
local function strip_nulls(value)
  if type(value) ~= "table" then return value end
  local out = {}
  for k, v in pairs(value) do
    if v ~= cjson.null then out[k] = strip_nulls(v) end
  end
  return out
end
obj = strip_nulls(cjson.decode(io.read("*a")))
local health = dofile(arg[1])
print(cjson.encode(health))
