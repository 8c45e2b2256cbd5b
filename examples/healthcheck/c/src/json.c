// A small JSON reader and writer for plugin payloads; see json.h.
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Nesting deeper than this is refused, so that a hostile payload cannot exhaust the stack.
#define MAX_DEPTH 64

typedef struct {
    const char *p;
    const char *end;
    const char *error;
} cursor;

static void skip_space(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        c->p++;
    }
}

static bool fail(cursor *c, const char *error) {
    c->error = error;
    return false;
}

static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static bool is_hex(char ch) {
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static bool literal(cursor *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) {
        return fail(c, "unexpected character");
    }
    c->p += n;
    return true;
}

static bool string(cursor *c) {
    c->p++;  // the opening quote
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            c->p++;
            return true;
        }
        if (ch < 0x20) {
            return fail(c, "control character in a string");
        }
        if (ch == '\\') {
            c->p++;
            if (c->p >= c->end) {
                break;
            }
            if (*c->p == 'u') {
                for (int i = 1; i <= 4; i++) {
                    if (c->p + i >= c->end || !is_hex(c->p[i])) {
                        return fail(c, "bad \\u escape");
                    }
                }
                c->p += 4;
            } else if (!strchr("\"\\/bfnrt", *c->p)) {
                return fail(c, "bad escape");
            }
        }
        c->p++;
    }
    return fail(c, "unterminated string");
}

static bool number(cursor *c) {
    if (c->p < c->end && *c->p == '-') {
        c->p++;
    }
    if (c->p >= c->end || !is_digit(*c->p)) {
        return fail(c, "bad number");
    }
    if (*c->p == '0') {
        c->p++;
    } else {
        while (c->p < c->end && is_digit(*c->p)) c->p++;
    }
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (c->p >= c->end || !is_digit(*c->p)) return fail(c, "bad number");
        while (c->p < c->end && is_digit(*c->p)) c->p++;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        if (c->p >= c->end || !is_digit(*c->p)) return fail(c, "bad number");
        while (c->p < c->end && is_digit(*c->p)) c->p++;
    }
    return true;
}

static bool value(cursor *c, json_value *out, int depth);

// An array or an object, from its opening bracket.
static bool container(cursor *c, char close, int depth) {
    bool object = close == '}';
    if (depth >= MAX_DEPTH) {
        return fail(c, "nested too deeply");
    }
    c->p++;
    skip_space(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        return true;
    }
    for (;;) {
        json_value item;
        skip_space(c);
        if (object) {
            if (c->p >= c->end || *c->p != '"') return fail(c, "expected a member name");
            if (!string(c)) return false;
            skip_space(c);
            if (c->p >= c->end || *c->p != ':') return fail(c, "expected ':'");
            c->p++;
        }
        if (!value(c, &item, depth + 1)) return false;
        skip_space(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p < c->end && *c->p == close) {
            c->p++;
            return true;
        }
        return fail(c, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static bool value(cursor *c, json_value *out, int depth) {
    skip_space(c);
    if (c->p >= c->end) {
        return fail(c, "unexpected end");
    }
    const char *start = c->p;
    bool ok;
    switch (*c->p) {
        case '{': out->type = JSON_OBJECT; ok = container(c, '}', depth); break;
        case '[': out->type = JSON_ARRAY; ok = container(c, ']', depth); break;
        case '"': out->type = JSON_STRING; ok = string(c); break;
        case 't': out->type = JSON_BOOL; ok = literal(c, "true"); break;
        case 'f': out->type = JSON_BOOL; ok = literal(c, "false"); break;
        case 'n': out->type = JSON_NULL; ok = literal(c, "null"); break;
        default: out->type = JSON_NUMBER; ok = number(c); break;
    }
    out->text = start;
    out->len = (size_t)(c->p - start);
    return ok;
}

bool json_parse(const char *text, size_t len, json_value *out, const char **error, size_t *offset) {
    cursor c = {text, text + len, NULL};
    bool ok = value(&c, out, 0);
    if (ok) {
        skip_space(&c);
        if (c.p != c.end) ok = fail(&c, "trailing characters after the value");
    }
    if (!ok) {
        if (error) *error = c.error;
        if (offset) *offset = (size_t)(c.p - text);
    }
    return ok;
}

// Calls `each` on every element (or member: `key` is then the member name's value) of a
// container that json_parse checked; stops when it returns true.
typedef bool (*visit)(json_value key, json_value item, void *state);

static void walk(json_value container, visit each, void *state) {
    cursor c = {container.text + 1, container.text + container.len, NULL};
    bool object = container.type == JSON_OBJECT;
    for (;;) {
        json_value key = {0}, item;
        skip_space(&c);
        if (c.p >= c.end || *c.p == ']' || *c.p == '}') return;
        if (object) {
            value(&c, &key, 0);
            skip_space(&c);
            c.p++;  // ':'
        }
        value(&c, &item, 0);
        if (each(key, item, state)) return;
        skip_space(&c);
        if (c.p < c.end && *c.p == ',') c.p++;
    }
}

typedef struct {
    const char *key;
    size_t index;
    json_value *out;
    bool found;
} search;

static bool match_key(json_value key, json_value item, void *state) {
    search *s = state;
    size_t len;
    char *name = json_string(key, &len);
    bool same = name && len == strlen(s->key) && memcmp(name, s->key, len) == 0;
    free(name);
    if (same) {
        *s->out = item;
        s->found = true;
    }
    return same;
}

bool json_get(json_value object, const char *key, json_value *out) {
    if (object.type != JSON_OBJECT) return false;
    search s = {key, 0, out, false};
    walk(object, match_key, &s);
    return s.found;
}

static bool match_index(json_value key, json_value item, void *state) {
    (void)key;
    search *s = state;
    if (s->index == 0) {
        *s->out = item;
        s->found = true;
        return true;
    }
    s->index--;
    return false;
}

bool json_at(json_value array, size_t index, json_value *out) {
    if (array.type != JSON_ARRAY) return false;
    search s = {NULL, index, out, false};
    walk(array, match_index, &s);
    return s.found;
}

static bool count_one(json_value key, json_value item, void *state) {
    (void)key;
    (void)item;
    (*(size_t *)state)++;
    return false;
}

size_t json_count(json_value value) {
    size_t n = 0;
    if (value.type == JSON_ARRAY || value.type == JSON_OBJECT) walk(value, count_one, &n);
    return n;
}

bool json_number(json_value value, double *out) {
    if (value.type != JSON_NUMBER) return false;
    char buf[64];
    size_t n = value.len < sizeof buf - 1 ? value.len : sizeof buf - 1;
    memcpy(buf, value.text, n);
    buf[n] = 0;
    *out = strtod(buf, NULL);
    return true;
}

bool json_bool(json_value value, bool *out) {
    if (value.type != JSON_BOOL) return false;
    *out = value.text[0] == 't';
    return true;
}

static unsigned hex4(const char *p) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        v = v * 16 + (unsigned)(is_digit(ch) ? ch - '0' : (ch | 0x20) - 'a' + 10);
    }
    return v;
}

static size_t put_utf8(char *out, unsigned cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

char *json_string(json_value value, size_t *len) {
    if (value.type != JSON_STRING) return NULL;
    // Unescaping never makes a string longer than its JSON text.
    char *out = malloc(value.len + 1);
    if (!out) return NULL;
    size_t n = 0;
    const char *p = value.text + 1, *end = value.text + value.len - 1;
    while (p < end) {
        if (*p != '\\') {
            out[n++] = *p++;
            continue;
        }
        p++;
        switch (*p) {
            case 'b': out[n++] = '\b'; p++; break;
            case 'f': out[n++] = '\f'; p++; break;
            case 'n': out[n++] = '\n'; p++; break;
            case 'r': out[n++] = '\r'; p++; break;
            case 't': out[n++] = '\t'; p++; break;
            case 'u': {
                unsigned cp = hex4(p + 1);
                p += 5;
                // A surrogate pair is one code point in two escapes.
                if (cp >= 0xD800 && cp < 0xDC00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                    unsigned low = hex4(p + 2);
                    if (low >= 0xDC00 && low < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                        p += 6;
                    }
                }
                n += put_utf8(out + n, cp);
                break;
            }
            default: out[n++] = *p++; break;
        }
    }
    out[n] = 0;
    if (len) *len = n;
    return out;
}

static void reserve(json_writer *w, size_t more) {
    if (w->len + more + 1 <= w->cap) return;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < w->len + more + 1) cap *= 2;
    w->data = realloc(w->data, cap);
    if (!w->data) abort();
    w->cap = cap;
}

static void append(json_writer *w, const char *s, size_t n) {
    reserve(w, n);
    memcpy(w->data + w->len, s, n);
    w->len += n;
    w->data[w->len] = 0;
}

void jw_raw(json_writer *w, const char *text) { append(w, text, strlen(text)); }

void jw_string_n(json_writer *w, const char *s, size_t len) {
    append(w, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            append(w, esc, 2);
        } else if (ch < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", ch);
            append(w, esc, 6);
        } else {
            append(w, (const char *)&s[i], 1);
        }
    }
    append(w, "\"", 1);
}

void jw_string(json_writer *w, const char *s) { jw_string_n(w, s, strlen(s)); }

void jw_number(json_writer *w, double n) {
    char buf[32];
    if (n == (double)(int64_t)n && n > -1e15 && n < 1e15) {
        snprintf(buf, sizeof buf, "%lld", (long long)n);
    } else {
        snprintf(buf, sizeof buf, "%.6g", n);
    }
    jw_raw(w, buf);
}

void jw_uint(json_writer *w, uint64_t n) {
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)n);
    jw_raw(w, buf);
}

void jw_key(json_writer *w, const char *key) {
    if (w->len > 0 && w->data[w->len - 1] != '{') jw_raw(w, ",");
    jw_string(w, key);
    jw_raw(w, ":");
}
