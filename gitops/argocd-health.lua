-- Argo CD health check for Tender's custom resources (tender.dev/v1alpha1):
-- WorkerConfiguration, BackupRepository, BackupJob, RestoreJob,
-- BackupPolicy, RetentionJob and VerificationJob. One script serves all
-- seven kinds;
-- argocd-cm.yaml embeds it under each kind's
-- resource.customizations.health.tender.dev_<Kind> key.
--
-- Argo CD runs it with the live object in the global `obj`, in gopher-lua
-- (Lua 5.1) with only the base, table and a reduced os library: no string
-- or math library and no string methods, so this script uses neither.
-- It returns hs.status and hs.message ("Reason: message" of the deciding
-- condition), from the conditions the controller writes (Ready,
-- Reconciling, Stalled, as kstatus reads them) and the phase:
--   Progressing  no status yet, or status.observedGeneration < generation
--   Degraded     Stalled=True, or phase Failed / PartiallySucceeded
--   Suspended    phase Suspended (a job or policy with spec.suspend: true)
--   Healthy      Ready=True (a BackupJob: phase Succeeded)
--   Progressing  anything else (waiting, launching, running, deleting)
local hs = {}

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Tender controller to report status"
  return hs
end

local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Tender controller to observe generation " .. generation
  if observed ~= nil then
    hs.message = hs.message .. " (observed " .. observed .. ")"
  end
  return hs
end

-- The condition of `type`, unless it was written for an older generation.
local function condition(type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      if generation ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation then
        return nil
      end
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

-- "Reason: message" of the first present condition among the rest of the
-- arguments (any of which may be nil), else `fallback`.
local function describe(fallback, ...)
  for i = 1, select("#", ...) do
    local c = select(i, ...)
    if c ~= nil then
      local reason = c.reason or ""
      local message = c.message or ""
      if reason ~= "" and message ~= "" then
        return reason .. ": " .. message
      elseif message ~= "" then
        return message
      elseif reason ~= "" then
        return reason
      end
    end
  end
  return fallback
end

local phase = status.phase or ""
local ready = condition("Ready")
local stalled = condition("Stalled")

if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = describe("Stalled", stalled, ready)
  return hs
end

if phase == "Failed" or phase == "PartiallySucceeded" then
  hs.status = "Degraded"
  hs.message = describe(phase, condition("Failed"), ready)
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe("Suspended", condition("Suspended"), ready)
  return hs
end

if is_true(ready) or (obj.kind == "BackupJob" and phase == "Succeeded") then
  hs.status = "Healthy"
  hs.message = describe("Ready", ready, condition("Complete"))
  return hs
end

hs.status = "Progressing"
local fallback = "Waiting for the Tender controller"
if phase ~= "" then
  fallback = "Phase " .. phase
end
hs.message = describe(fallback, condition("Reconciling"), condition("InstanceTerminating"), ready)
return hs
