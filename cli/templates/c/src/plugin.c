// {{name}}: a ferry plugin in C.
//
// It greets: given {"name": "ferry"} it answers {"greeting": "hello, ferry!"}. Replace it with
// what your plugin does; build/bindings/plugin.h (written by `ferry plugin build`) declares
// everything the agent offers: logging, progress, cancellation, request-data, and the metrics,
// kv and process interfaces a plugin can be granted.
//
// Every command gets a fresh instance of the plugin, so nothing carries over from one command
// to the next, and memory not freed is gone with the instance.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "plugin.h"

// Fails the command as invalid-input with `message` (a printf format).
static bool invalid_input(exports_ferry_plugin_handler_error_t *err, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

static bool invalid_input(exports_ferry_plugin_handler_error_t *err, const char *format, ...) {
    char message[512];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    err->tag = FERRY_PLUGIN_TYPES_ERROR_INVALID_INPUT;
    plugin_string_dup(&err->val.invalid_input, message);
    return false;
}

static void log_info(const char *message) {
    plugin_string_t text;
    plugin_string_set(&text, message);
    ferry_plugin_context_log(FERRY_PLUGIN_CONTEXT_LEVEL_INFO, &text);
}

static void progress(uint8_t percent, const char *message) {
    plugin_string_t text;
    plugin_string_set(&text, message);
    ferry_plugin_context_progress(percent, &text);
}

// Whether the payload's content type is JSON (or not given, which senders mean as JSON).
static bool is_json(const plugin_string_t *content_type) {
    const char *json = "application/json";
    size_t n = strlen(json);
    return content_type->len == 0 ||
           (content_type->len >= n && memcmp(content_type->ptr, json, n) == 0 &&
            (content_type->len == n || content_type->ptr[n] == ';'));
}

// Handles one command: the result's bytes go to `ret`, or the reason it failed to `err`.
bool exports_ferry_plugin_handler_handle(exports_ferry_plugin_handler_command_t *cmd,
                                         plugin_list_u8_t *ret,
                                         exports_ferry_plugin_handler_error_t *err) {
    if (!is_json(&cmd->content_type)) {
        return invalid_input(err, "the payload is %.*s; send application/json",
                             (int)cmd->content_type.len, (const char *)cmd->content_type.ptr);
    }
    json_value request, field;
    const char *problem;
    size_t at;
    if (!json_parse((const char *)cmd->payload.ptr, cmd->payload.len, &request, &problem, &at)) {
        return invalid_input(err, "the payload is not valid JSON: %s at byte %zu", problem, at);
    }
    if (request.type != JSON_OBJECT) {
        return invalid_input(err, "the payload must be a JSON object, like {\"name\": \"ferry\"}");
    }
    if (!json_get(request, "name", &field)) {
        return invalid_input(err, "missing field `name`: say whom to greet");
    }
    char *name = json_string(field, NULL);
    if (!name) {
        return invalid_input(err, "`name` must be a string");
    }
    if (name[strspn(name, " \t\r\n")] == 0) {
        return invalid_input(err, "`name` is empty; say whom to greet");
    }
    double times = 1;
    if (json_get(request, "times", &field) &&
        (!json_number(field, &times) || times != (double)(int)times)) {
        return invalid_input(err, "`times` must be a whole number");
    }
    if (times < 1 || times > 10) {
        return invalid_input(err, "`times` is %g; it must be from 1 to 10", times);
    }

    char line[256];
    snprintf(line, sizeof line, "greeting %s %d time(s)", name, (int)times);
    log_info(line);
    json_writer out = {0};
    jw_raw(&out, "{");
    jw_key(&out, "greeting");
    json_writer greeting = {0};
    for (int i = 1; i <= (int)times; i++) {
        // An operator can cancel a command; a plugin that works for long should notice.
        if (ferry_plugin_context_cancelled()) {
            err->tag = FERRY_PLUGIN_TYPES_ERROR_CANCELLED;
            return false;
        }
        snprintf(line, sizeof line, "%shello, %s!", i > 1 ? " " : "", name);
        jw_raw(&greeting, line);
        progress((uint8_t)(i * 100 / (int)times), "greeting");
    }
    jw_string(&out, greeting.data);
    jw_raw(&out, "}");
    free(greeting.data);
    free(name);
    exports_ferry_plugin_handler_command_free(cmd);

    // The agent takes the bytes; the bindings free them after it has.
    ret->ptr = (uint8_t *)out.data;
    ret->len = out.len;
    return true;
}
