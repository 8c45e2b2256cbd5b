// healthcheck-c: checks the host's memory and disk against limits, with the agent's metrics.
//
// Payload (JSON, every field optional):
//   {"max_memory_percent": 90, "max_disk_percent": 90, "history_seconds": 0}
// Result: {"healthy", "checks": [{"name", "used_percent", "limit_percent", "ok"}, ...],
//          "memory_total_bytes", "disk_total_bytes", "agent_memory_bytes",
//          "history": {"seconds", "samples", "peak_cpu_percent"} (when history_seconds > 0)}
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "plugin.h"

static bool fail(exports_ferry_plugin_handler_error_t *err, uint8_t tag, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

// Fails the command with `tag` (invalid-input, denied or failed) and a message.
static bool fail(exports_ferry_plugin_handler_error_t *err, uint8_t tag, const char *format, ...) {
    char message[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    err->tag = tag;
    // invalid_input, denied and failed all hold their message in the same place.
    plugin_string_dup(&err->val.invalid_input, message);
    return false;
}

#define INVALID FERRY_PLUGIN_TYPES_ERROR_INVALID_INPUT

// A refused metrics call: denied when the capability is not granted, failed otherwise.
static bool host_error(exports_ferry_plugin_handler_error_t *err, plugin_string_t *message) {
    char text[1024];
    snprintf(text, sizeof text, "%.*s", (int)message->len, (const char *)message->ptr);
    plugin_string_free(message);
    uint8_t tag = strstr(text, "not granted") ? FERRY_PLUGIN_TYPES_ERROR_DENIED
                                              : FERRY_PLUGIN_TYPES_ERROR_FAILED;
    return fail(err, tag, "%s", text);
}

static void say(ferry_plugin_context_level_t level, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

static void say(ferry_plugin_context_level_t level, const char *format, ...) {
    char line[512];
    va_list args;
    va_start(args, format);
    vsnprintf(line, sizeof line, format, args);
    va_end(args);
    plugin_string_t text;
    plugin_string_set(&text, line);
    ferry_plugin_context_log(level, &text);
}

static void progress(uint8_t percent, const char *message) {
    plugin_string_t text;
    plugin_string_set(&text, message);
    ferry_plugin_context_progress(percent, &text);
}

// A field's JSON text, for messages ("\"most\"", "0"); "?" if it is long.
static const char *shown(json_value value, char *buf, size_t size) {
    if (value.len >= size) return "?";
    memcpy(buf, value.text, value.len);
    buf[value.len] = 0;
    return buf;
}

// Reads a limit from 1 to 100 (90 when absent) into `*out`.
static bool percent_limit(json_value request, const char *field, double *out,
                          exports_ferry_plugin_handler_error_t *err) {
    json_value value;
    char buf[64];
    *out = 90;
    if (!json_get(request, field, &value)) return true;
    if (!json_number(value, out) || *out < 1 || *out > 100) {
        return fail(err, INVALID, "`%s` must be a number from 1 to 100, not %s", field,
                    shown(value, buf, sizeof buf));
    }
    return true;
}

static double percent(uint64_t used, uint64_t total) {
    return total ? round((double)used * 1000 / (double)total) / 10 : 0;
}

static bool is_json(const plugin_string_t *content_type) {
    const char *json = "application/json";
    size_t n = strlen(json);
    return content_type->len == 0 ||
           (content_type->len >= n && memcmp(content_type->ptr, json, n) == 0 &&
            (content_type->len == n || content_type->ptr[n] == ';'));
}

bool exports_ferry_plugin_handler_handle(exports_ferry_plugin_handler_command_t *cmd,
                                         plugin_list_u8_t *ret,
                                         exports_ferry_plugin_handler_error_t *err) {
    if (!is_json(&cmd->content_type)) {
        return fail(err, INVALID, "the payload is %.*s; send application/json",
                    (int)cmd->content_type.len, (const char *)cmd->content_type.ptr);
    }
    json_value request = {"{}", 2, JSON_OBJECT}, value;
    const char *problem;
    size_t at;
    char buf[64];
    if (cmd->payload.len > 0 &&
        !json_parse((const char *)cmd->payload.ptr, cmd->payload.len, &request, &problem, &at)) {
        return fail(err, INVALID, "the payload is not valid JSON: %s at byte %zu", problem, at);
    }
    if (request.type != JSON_OBJECT) {
        return fail(err, INVALID,
                    "the payload must be a JSON object, like {\"max_memory_percent\": 90}");
    }
    double max_memory, max_disk, history_seconds = 0;
    if (!percent_limit(request, "max_memory_percent", &max_memory, err) ||
        !percent_limit(request, "max_disk_percent", &max_disk, err)) {
        return false;
    }
    if (json_get(request, "history_seconds", &value) &&
        (!json_number(value, &history_seconds) || history_seconds != floor(history_seconds) ||
         history_seconds < 0 || history_seconds > 86400)) {
        return fail(err, INVALID, "`history_seconds` must be a whole number from 0 to 86400, not %s",
                    shown(value, buf, sizeof buf));
    }
    progress(10, "payload checked");

    ferry_plugin_metrics_sample_t sample;
    plugin_string_t host_err;
    if (!ferry_plugin_metrics_now(&sample, &host_err)) return host_error(err, &host_err);
    progress(50, "sampled the host");

    struct {
        const char *name;
        double used, limit;
        bool ok;
    } checks[] = {
        {"memory", percent(sample.memory_used_bytes, sample.memory_total_bytes), max_memory, 0},
        {"disk", percent(sample.disk_used_bytes, sample.disk_total_bytes), max_disk, 0},
    };
    bool healthy = true;
    json_writer out = {0};
    jw_raw(&out, "{");
    jw_key(&out, "checks");
    jw_raw(&out, "[");
    for (size_t i = 0; i < 2; i++) {
        checks[i].ok = checks[i].used <= checks[i].limit;
        if (!checks[i].ok) {
            healthy = false;
            say(FERRY_PLUGIN_CONTEXT_LEVEL_WARN, "%s is %g%% used, over the limit of %g%%",
                checks[i].name, checks[i].used, checks[i].limit);
        }
        jw_raw(&out, i ? ",{" : "{");
        jw_key(&out, "name");
        jw_string(&out, checks[i].name);
        jw_key(&out, "used_percent");
        jw_number(&out, checks[i].used);
        jw_key(&out, "limit_percent");
        jw_number(&out, checks[i].limit);
        jw_key(&out, "ok");
        jw_raw(&out, checks[i].ok ? "true}" : "false}");
    }
    jw_raw(&out, "]");
    say(FERRY_PLUGIN_CONTEXT_LEVEL_INFO, "memory %g%% used, disk %g%% used", checks[0].used,
        checks[1].used);
    jw_key(&out, "healthy");
    jw_raw(&out, healthy ? "true" : "false");
    jw_key(&out, "memory_total_bytes");
    jw_uint(&out, sample.memory_total_bytes);
    jw_key(&out, "disk_total_bytes");
    jw_uint(&out, sample.disk_total_bytes);
    jw_key(&out, "agent_memory_bytes");
    jw_uint(&out, sample.agent_memory_bytes);

    if (history_seconds > 0) {
        ferry_plugin_metrics_list_sample_t samples;
        if (!ferry_plugin_metrics_history((uint32_t)history_seconds, &samples, &host_err)) {
            free(out.data);
            return host_error(err, &host_err);
        }
        double peak = 0;
        for (size_t i = 0; i < samples.len; i++) {
            if (samples.ptr[i].cpu_percent > peak) peak = samples.ptr[i].cpu_percent;
        }
        jw_key(&out, "history");
        jw_raw(&out, "{");
        jw_key(&out, "seconds");
        jw_number(&out, history_seconds);
        jw_key(&out, "samples");
        jw_uint(&out, samples.len);
        jw_key(&out, "peak_cpu_percent");
        jw_number(&out, round(peak * 10) / 10);
        jw_raw(&out, "}");
        char step[64];
        snprintf(step, sizeof step, "read %zu samples of history", samples.len);
        progress(80, step);
        ferry_plugin_metrics_list_sample_free(&samples);
    }
    jw_raw(&out, "}");
    progress(100, "done");
    exports_ferry_plugin_handler_command_free(cmd);
    ret->ptr = (uint8_t *)out.data;
    ret->len = out.len;
    return true;
}
