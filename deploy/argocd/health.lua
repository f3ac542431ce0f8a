-- Argo CD health check for voice.workflow.io/VoicePipeline.
-- Argo CD has no generic health for custom resources; this reads the kstatus conditions
-- that voice-operator writes (the same ones Flux and `kubectl wait` read):
--   status.observedGeneration behind metadata.generation -> Progressing (not observed yet)
--   Stalled=True                                          -> Degraded (needs a change of spec)
--   Ready=True                                            -> Healthy
--   Reconciling=True                                      -> Progressing (rolling out, retrying)
--   Ready=False and not reconciling                       -> Degraded
--   no conditions yet                                     -> Progressing
local hs = { status = "Progressing", message = "Waiting for voice-operator to report status" }
if obj.status == nil then
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for voice-operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = {}
for _, condition in ipairs(obj.status.conditions or {}) do
  conditions[condition.type] = condition
end
local function describe(condition)
  local reason = condition.reason or condition.type
  if condition.message ~= nil and condition.message ~= "" then
    return reason .. ": " .. condition.message
  end
  return reason
end

local stalled, ready, reconciling = conditions["Stalled"], conditions["Ready"], conditions["Reconciling"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
elseif ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready)
end
return hs
