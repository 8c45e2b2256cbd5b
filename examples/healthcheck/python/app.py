"""healthcheck-py: checks the host's memory and disk against limits, with the agent's metrics.

Payload (JSON, every field optional):
    {"max_memory_percent": 90, "max_disk_percent": 90, "history_seconds": 0}
Result: {"healthy", "checks": [{"name", "used_percent", "limit_percent", "ok"}, ...],
         "memory_total_bytes", "disk_total_bytes", "agent_memory_bytes",
         "history": {"seconds", "samples", "peak_cpu_percent"} (when history_seconds > 0)}
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import context, metrics
from wit_world.imports.types import Command, Error_Denied, Error_Failed, Error_InvalidInput


def invalid_input(message: str) -> Err:
    return Err(Error_InvalidInput(message))


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def percent_limit(request: dict, field: str) -> float:
    value = request.get(field, 90)
    if not is_number(value) or not 1 <= value <= 100:
        raise invalid_input(f"`{field}` must be a number from 1 to 100, not {json.dumps(value)}")
    return float(value)


def host_error(message: str) -> Err:
    """A metrics call refused: denied when the capability is not granted, failed otherwise."""
    if "not granted" in message:
        return Err(Error_Denied(message))
    return Err(Error_Failed(message))


def percent(used: int, total: int) -> float:
    return round(used * 100 / total, 1) if total else 0.0


class Handler(exports.Handler):
    def handle(self, cmd: Command) -> bytes:
        content_type = cmd.content_type.split(";")[0].strip().lower()
        if content_type not in ("", "application/json"):
            raise invalid_input(f"the payload is {cmd.content_type}; send application/json")
        try:
            request = json.loads(cmd.payload) if cmd.payload else {}
        except ValueError as e:
            raise invalid_input(f"the payload is not valid JSON: {e}")
        if not isinstance(request, dict):
            raise invalid_input("the payload must be a JSON object, like {\"max_memory_percent\": 90}")
        max_memory = percent_limit(request, "max_memory_percent")
        max_disk = percent_limit(request, "max_disk_percent")
        history_seconds = request.get("history_seconds", 0)
        if not isinstance(history_seconds, int) or isinstance(history_seconds, bool) \
                or not 0 <= history_seconds <= 86400:
            raise invalid_input(
                "`history_seconds` must be a whole number from 0 to 86400, "
                f"not {json.dumps(history_seconds)}")
        context.progress(10, "payload checked")

        try:
            sample = metrics.now()
        except Err as e:
            raise host_error(e.value)
        context.progress(50, "sampled the host")

        checks = []
        for name, used, total, limit in (
            ("memory", sample.memory_used_bytes, sample.memory_total_bytes, max_memory),
            ("disk", sample.disk_used_bytes, sample.disk_total_bytes, max_disk),
        ):
            used_percent = percent(used, total)
            ok = used_percent <= limit
            if not ok:
                context.log(context.Level.WARN,
                            f"{name} is {used_percent}% used, over the limit of {limit:g}%")
            checks.append({"name": name, "used_percent": used_percent,
                           "limit_percent": limit, "ok": ok})
        context.log(context.Level.INFO,
                    f"memory {checks[0]['used_percent']}% used, disk {checks[1]['used_percent']}% used")

        result = {
            "healthy": all(check["ok"] for check in checks),
            "checks": checks,
            "memory_total_bytes": sample.memory_total_bytes,
            "disk_total_bytes": sample.disk_total_bytes,
            "agent_memory_bytes": sample.agent_memory_bytes,
        }
        if history_seconds > 0:
            try:
                samples = metrics.history(history_seconds)
            except Err as e:
                raise host_error(e.value)
            peak = max((s.cpu_percent for s in samples), default=0.0)
            result["history"] = {"seconds": history_seconds, "samples": len(samples),
                                 "peak_cpu_percent": round(peak, 1)}
            context.progress(80, f"read {len(samples)} samples of history")
        context.progress(100, "done")
        return json.dumps(result).encode()
