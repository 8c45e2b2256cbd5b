// A ferry plugin in JavaScript.
//
// It greets: given {"name": "ferry"} it answers {"greeting": "hello, ferry!"}. Replace it with
// what your plugin does. The agent's functions are imported from the interfaces of
// wit/0.1.0/plugin.wit: `ferry:plugin/context@0.1.0` (log, progress, cancelled, requestData),
// and `metrics`, `kv` and `process`, which a plugin must be granted.
//
// Every command gets a fresh instance of the plugin, so nothing carries over from one command
// to the next.
import { log, progress, cancelled } from 'ferry:plugin/context@0.1.0';

// A failure, as the agent reports it: `invalid-input`, `denied` and `failed` carry a message
// for the operator; `cancelled` and `timed-out` do not.
function fail(tag, message) {
  const error = new Error(message ?? tag);
  error.payload = message === undefined ? { tag } : { tag, val: message };
  return error;
}

const invalidInput = (message) => fail('invalid-input', message);

function isJson(contentType) {
  const type = contentType.split(';')[0].trim().toLowerCase();
  return type === '' || type === 'application/json';
}

export const handler = {
  // One command: { id, topic, payload (Uint8Array), contentType }. Returns the output bytes,
  // or throws a failure.
  handle(command) {
    if (!isJson(command.contentType)) {
      throw invalidInput(`the payload is ${command.contentType}; send application/json`);
    }
    let request;
    try {
      request = JSON.parse(new TextDecoder().decode(command.payload));
    } catch (e) {
      throw invalidInput(`the payload is not valid JSON: ${e.message}`);
    }
    if (request === null || typeof request !== 'object' || Array.isArray(request)) {
      throw invalidInput('the payload must be a JSON object, like {"name": "ferry"}');
    }
    const { name, times = 1 } = request;
    if (name === undefined) {
      throw invalidInput('missing field `name`: say whom to greet');
    }
    if (typeof name !== 'string') {
      throw invalidInput('`name` must be a string');
    }
    if (name.trim() === '') {
      throw invalidInput('`name` is empty; say whom to greet');
    }
    if (!Number.isInteger(times)) {
      throw invalidInput('`times` must be a whole number');
    }
    if (times < 1 || times > 10) {
      throw invalidInput(`\`times\` is ${times}; it must be from 1 to 10`);
    }

    log('info', `greeting ${name} ${times} time(s)`);
    const greetings = [];
    for (let i = 1; i <= times; i++) {
      // An operator can cancel a command; a plugin that works for long should notice.
      if (cancelled()) {
        throw fail('cancelled');
      }
      greetings.push(`hello, ${name}!`);
      progress(Math.floor((i * 100) / times), 'greeting');
    }
    return new TextEncoder().encode(JSON.stringify({ greeting: greetings.join(' ') }));
  },
};
