-- Argo CD health check for baton.dev/InferencePool.
-- Install under argocd-cm: resource.customizations.health.baton.dev_InferencePool (docs/autoscaling.md).
-- Reads only status written by the baton operator: observedGeneration and the Ready, Progressing,
-- Degraded and ScalingActive conditions. Autoscaled replica counts never make a pool unhealthy.
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the baton operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition("Ready")
local progressing = condition("Progressing")
local degraded = condition("Degraded")
local scaling = condition("ScalingActive")

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "InferencePool is degraded")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "InferencePool is ready")
  if scaling ~= nil and scaling.status == "False" then
    -- Metrics unreachable holds replicas: the pool still serves, but say so.
    hs.message = hs.message .. "; autoscaling inactive: " .. text(scaling, scaling.reason or "")
  end
  return hs
end

if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = text(progressing, text(ready, "InferencePool is progressing"))
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = text(ready, "InferencePool is not ready")
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
