"""A ferry plugin in Python.

It greets: given {"name": "ferry"} it answers {"greeting": "hello, ferry!"}. Replace it with
what your plugin does. The agent's functions are in `wit_world.imports`: `context` (log,
progress, cancelled, request_data), and `metrics`, `kv` and `process`, which a plugin must be
granted. `componentize-py -d wit/0.1.0 -w plugin bindings .` writes them out for your editor.

Every command gets a fresh instance of the plugin, so nothing carries over from one command to
the next.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import context
from wit_world.imports.types import Command, Error_Cancelled, Error_InvalidInput


def invalid_input(message: str) -> Err:
    """Fails the command as invalid-input: say which field and what was expected."""
    return Err(Error_InvalidInput(message))


def is_json(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in ("", "application/json")


class Handler(exports.Handler):
    def handle(self, cmd: Command) -> bytes:
        """Handles one command: returns the output bytes, or raises Err(error)."""
        if not is_json(cmd.content_type):
            raise invalid_input(f"the payload is {cmd.content_type}; send application/json")
        try:
            request = json.loads(cmd.payload)
        except ValueError as e:
            raise invalid_input(f"the payload is not valid JSON: {e}")
        if not isinstance(request, dict):
            raise invalid_input('the payload must be a JSON object, like {"name": "ferry"}')
        if "name" not in request:
            raise invalid_input("missing field `name`: say whom to greet")
        name = request["name"]
        if not isinstance(name, str):
            raise invalid_input("`name` must be a string")
        if not name.strip():
            raise invalid_input("`name` is empty; say whom to greet")
        times = request.get("times", 1)
        if not isinstance(times, int) or isinstance(times, bool):
            raise invalid_input("`times` must be a whole number")
        if not 1 <= times <= 10:
            raise invalid_input(f"`times` is {times}; it must be from 1 to 10")

        context.log(context.Level.INFO, f"greeting {name} {times} time(s)")
        greetings = []
        for i in range(1, times + 1):
            # An operator can cancel a command; a plugin that works for long should notice.
            if context.cancelled():
                raise Err(Error_Cancelled())
            greetings.append(f"hello, {name}!")
            context.progress(i * 100 // times, "greeting")
        return json.dumps({"greeting": " ".join(greetings)}).encode()
