-- wrk script for `make bench`: POST one body file (content type, optional bearer token), check a
-- sample of the answers, and print the summary as one JSON line (latencies in microseconds).
--   BENCH_CHECK        "" (status only), "first_label" (the first "label" value), "first_key" (the first
--                      JSON key: the stock handler's {"tabby": 0.4, ...}) or "commas" (the answer's shape)
--   BENCH_ALLOWED      the values the first label / key may take, separated by "|"
--   BENCH_LABELS       if > 0: how many "label" keys an answer has (its top-k: the shape)
--   BENCH_COMMAS       "commas": how many commas an answer has (an embedding's width)
--                      or "cosine" (the answer's "embedding" has the reference's width and a cosine
--                      of at least BENCH_MIN_COSINE with it)
--   BENCH_REFERENCE    "cosine": a file with the reference embedding, numbers separated by commas
--   BENCH_MIN_COSINE   "cosine": the smallest cosine that is still the same answer
--   BENCH_CHECK_EVERY  check every n-th answer of each connection thread (status: every answer)
-- A check that raises (an answer of an unexpected shape) counts as a wrong answer, never stops the thread.
-- Refusals (503) are counted on their own too, with those whose body is not the contract's JSON error
-- ({"code": 503, "type": ..., "message": ...}): the overload section reports both.
local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*all")
  f:close()
  return data
end

wrk.method = "POST"
wrk.body = read_file(os.getenv("BENCH_BODY"))
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
local token = os.getenv("BENCH_TOKEN") or ""
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local check = os.getenv("BENCH_CHECK") or ""
local allowed = {}
for value in string.gmatch(os.getenv("BENCH_ALLOWED") or "", "[^|]+") do
  allowed[value] = true
end
local want_labels = tonumber(os.getenv("BENCH_LABELS") or "0")
local want_commas = tonumber(os.getenv("BENCH_COMMAS") or "0")
local every = tonumber(os.getenv("BENCH_CHECK_EVERY") or "10")
local min_cosine = tonumber(os.getenv("BENCH_MIN_COSINE") or "0.999")

local function numbers(text)
  local out = {}
  for word in string.gmatch(text, "[^,%s]+") do
    out[#out + 1] = assert(tonumber(word), "not a number: " .. word)
  end
  return out
end

local reference = {}
if check == "cosine" then
  reference = numbers(read_file(os.getenv("BENCH_REFERENCE")))
end

-- per thread (read back in done() with thread:get)
seen, checked, wrong, not_ok, refused, refused_bad = 0, 0, 0, 0, 0, 0
first_wrong = ""

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

local function count(body, pattern)
  local _, n = string.gsub(body, pattern, "")
  return n
end

local function cosine(body)
  local vector = numbers(assert(string.match(body, '"embedding"%s*:%s*%[([^%]]*)%]'), "no embedding"))
  if #vector ~= #reference or #vector == 0 then
    return false
  end
  local dot, a, b = 0, 0, 0
  for i = 1, #vector do
    dot, a, b = dot + vector[i] * reference[i], a + vector[i] ^ 2, b + reference[i] ^ 2
  end
  return dot / math.sqrt(a * b) >= min_cosine
end

function verify(body)
  if check == "first_label" then
    local value = string.match(body, '"label"%s*:%s*"([^"]*)"')
    return value ~= nil and allowed[value] == true and (want_labels <= 0 or count(body, '"label"') == want_labels)
  elseif check == "first_key" then
    local value = string.match(body, '^%s*%[?%s*{%s*"([^"]*)"')
    return value ~= nil and allowed[value] == true
  elseif check == "commas" then
    return count(body, ",") == want_commas
  elseif check == "cosine" then
    return cosine(body)
  end
  return false
end

function response(status, headers, body)
  seen = seen + 1
  if status ~= 200 then
    not_ok = not_ok + 1
    if status == 503 then
      refused = refused + 1
      local b = body or ""
      if not (string.find(b, '"code"%s*:%s*503') and string.find(b, '"type"') and string.find(b, '"message"')) then
        refused_bad = refused_bad + 1
      end
    end
    if first_wrong == "" then
      first_wrong = "status " .. status .. ": " .. string.sub(body or "", 1, 140)
    end
    return
  end
  if check == "" or (seen - 1) % every ~= 0 then
    return
  end
  checked = checked + 1
  local done, ok = pcall(verify, body)
  if not (done and ok) then
    wrong = wrong + 1
    if first_wrong == "" then
      first_wrong = string.sub(body, 1, 160)
    end
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  local n_checked, n_wrong, n_not_ok, n_refused, n_refused_bad, example = 0, 0, 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    n_checked = n_checked + (thread:get("checked") or 0)
    n_wrong = n_wrong + (thread:get("wrong") or 0)
    n_not_ok = n_not_ok + (thread:get("not_ok") or 0)
    n_refused = n_refused + (thread:get("refused") or 0)
    n_refused_bad = n_refused_bad + (thread:get("refused_bad") or 0)
    local w = thread:get("first_wrong") or ""
    if example == "" then
      example = w
    end
  end
  example = string.gsub(string.gsub(example, '\\', '\\\\'), '"', '\\"')
  example = string.gsub(example, '[%c]', ' ')
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "non2xx": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"checked": %d, "wrong": %d, "not_200": %d, "refused": %d, "refused_bad": %d, "first_wrong": "%s"}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    n_checked, n_wrong, n_not_ok, n_refused, n_refused_bad, example))
end
