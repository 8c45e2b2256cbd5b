// healthcheck-js: checks the host's memory and disk against limits, with the agent's metrics.
//
// Payload (JSON, every field optional):
//   {"max_memory_percent": 90, "max_disk_percent": 90, "history_seconds": 0}
// Result: {"healthy", "checks": [{"name", "used_percent", "limit_percent", "ok"}, ...],
//          "memory_total_bytes", "disk_total_bytes", "agent_memory_bytes",
//          "history": {"seconds", "samples", "peak_cpu_percent"} (when history_seconds > 0)}
import { log, progress } from 'ferry:plugin/context@0.1.0';
import { now, history } from 'ferry:plugin/metrics@0.1.0';

// A failure, as the agent reports it (`invalid-input`, `denied`, `failed`, with a message).
function fail(tag, message) {
  const error = new Error(message);
  error.payload = { tag, val: message };
  return error;
}

const invalidInput = (message) => fail('invalid-input', message);

// A metrics call refused: denied when the capability is not granted, failed otherwise. The
// bindings throw a host call's error with the error string as its `payload`.
function hostError(e) {
  const message = typeof e?.payload === 'string' ? e.payload : String(e);
  return fail(message.includes('not granted') ? 'denied' : 'failed', message);
}

function percentLimit(request, field) {
  const value = request[field] ?? 90;
  if (typeof value !== 'number' || !(value >= 1 && value <= 100)) {
    throw invalidInput(`\`${field}\` must be a number from 1 to 100, not ${JSON.stringify(value)}`);
  }
  return value;
}

const percent = (used, total) => (total ? Math.round((Number(used) * 1000) / Number(total)) / 10 : 0);

export const handler = {
  handle(command) {
    const type = command.contentType.split(';')[0].trim().toLowerCase();
    if (type !== '' && type !== 'application/json') {
      throw invalidInput(`the payload is ${command.contentType}; send application/json`);
    }
    let request;
    try {
      const text = new TextDecoder().decode(command.payload);
      request = text === '' ? {} : JSON.parse(text);
    } catch (e) {
      throw invalidInput(`the payload is not valid JSON: ${e.message}`);
    }
    if (request === null || typeof request !== 'object' || Array.isArray(request)) {
      throw invalidInput('the payload must be a JSON object, like {"max_memory_percent": 90}');
    }
    const maxMemory = percentLimit(request, 'max_memory_percent');
    const maxDisk = percentLimit(request, 'max_disk_percent');
    const historySeconds = request.history_seconds ?? 0;
    if (!Number.isInteger(historySeconds) || historySeconds < 0 || historySeconds > 86400) {
      throw invalidInput(
        `\`history_seconds\` must be a whole number from 0 to 86400, not ${JSON.stringify(historySeconds)}`,
      );
    }
    progress(10, 'payload checked');

    let sample;
    try {
      sample = now();
    } catch (e) {
      throw hostError(e);
    }
    progress(50, 'sampled the host');

    const checks = [
      ['memory', sample.memoryUsedBytes, sample.memoryTotalBytes, maxMemory],
      ['disk', sample.diskUsedBytes, sample.diskTotalBytes, maxDisk],
    ].map(([name, used, total, limit]) => {
      const usedPercent = percent(used, total);
      const ok = usedPercent <= limit;
      if (!ok) {
        log('warn', `${name} is ${usedPercent}% used, over the limit of ${limit}%`);
      }
      return { name, used_percent: usedPercent, limit_percent: limit, ok };
    });
    log('info', `memory ${checks[0].used_percent}% used, disk ${checks[1].used_percent}% used`);

    const result = {
      healthy: checks.every((check) => check.ok),
      checks,
      // u64 values arrive as BigInt; byte counts fit a double exactly (below 2^53).
      memory_total_bytes: Number(sample.memoryTotalBytes),
      disk_total_bytes: Number(sample.diskTotalBytes),
      agent_memory_bytes: Number(sample.agentMemoryBytes),
    };
    if (historySeconds > 0) {
      let samples;
      try {
        samples = history(historySeconds);
      } catch (e) {
        throw hostError(e);
      }
      const peak = samples.reduce((max, s) => Math.max(max, s.cpuPercent), 0);
      result.history = {
        seconds: historySeconds,
        samples: samples.length,
        peak_cpu_percent: Math.round(peak * 10) / 10,
      };
      progress(80, `read ${samples.length} samples of history`);
    }
    progress(100, 'done');
    return new TextEncoder().encode(JSON.stringify(result));
  },
};
