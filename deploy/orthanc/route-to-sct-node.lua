-- Orthanc auto-routing to sct-node: every stable MR series is sent, whole, to the node.
--
-- Loaded by deploy/orthanc/orthanc.json ("LuaScripts"). Orthanc calls OnStableSeries once a series has
-- received no new instance for "StableAge" seconds, so the node gets a complete series on one
-- association instead of instances trickling in as the scanner sends them.
--
-- What is routed: series whose Modality is MR, except series that came from the node itself (the node
-- sends back CT series, so the Modality test already excludes them; the RemoteAET test is a second
-- guard against a routing loop should the node ever send MR-derived objects back).
--
-- How: an asynchronous Orthanc job (POST /modalities/sct-node/store), so the Lua engine never waits for
-- the network. A failed job is logged by OnJobFailure below and kept in Orthanc's job list
-- (GET /jobs/<id>); resubmit it with POST /jobs/<id>/resubmit once the node is back.
--
-- References: Orthanc Book, "Server-side scripting with Lua" (OnStableSeries, RestApiPost) and
-- "REST API" (/modalities/{id}/store); DICOM PS3.4 Annex B (Storage Service Class).

-- The key of the node in "DicomModalities" (not its AE title, which is read from the configuration).
local NODE = 'sct-node'
-- Only these modalities are translated to a synthetic CT.
local ROUTED_MODALITIES = { MR = true }

local function NodeAet()
  local modality = GetOrthancConfiguration()['DicomModalities'][NODE]
  if modality == nil then
    return nil
  end
  -- A modality is either { "AET": ..., "Host": ..., "Port": ... } or [ AET, host, port ].
  return modality['AET'] or modality[1]
end

function OnStableSeries(seriesId, tags, metadata)
  local modality = tags['Modality']
  if modality == nil or not ROUTED_MODALITIES[modality] then
    return
  end
  local nodeAet = NodeAet()
  if nodeAet == nil then
    print('sct-node routing: no "' .. NODE .. '" in DicomModalities; series ' .. seriesId .. ' not sent')
    return
  end
  if metadata['RemoteAET'] ~= nil and metadata['RemoteAET'] == nodeAet then
    return  -- came from the node: never send it back
  end
  -- keepStrings (the second argument of DumpJson) keeps the identifier a JSON string.
  local request = { Resources = { seriesId }, Asynchronous = true }
  local answer = RestApiPost('/modalities/' .. NODE .. '/store', DumpJson(request, true))
  if answer == nil then
    print('sct-node routing: could not queue series ' .. seriesId .. ' for ' .. NODE)
  else
    print('sct-node routing: ' .. modality .. ' series ' .. seriesId .. ' queued for ' .. NODE ..
          ' (job ' .. ParseJson(answer)['ID'] .. ')')
  end
end

function OnJobFailure(jobId)
  local job = ParseJson(RestApiGet('/jobs/' .. jobId))
  if job ~= nil and job['Type'] == 'DicomModalityStore' then
    print('sct-node routing: job ' .. jobId .. ' failed (' .. (job['ErrorDescription'] or 'no description') ..
          '); resubmit with POST /jobs/' .. jobId .. '/resubmit')
  end
end
