// A small JSON reader and writer for plugin payloads, written by `ferry plugin new`.
//
// The reader does not copy or allocate: a json_value is the span of a value's text inside the
// payload, checked once by json_parse. The writer appends to a growable buffer whose bytes can
// be handed to the agent as the command's output as they are.
#ifndef FERRY_JSON_H
#define FERRY_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    JSON_NULL,
    JSON_BOOL,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
} json_type;

// One JSON value: its text, from its first to its last character.
typedef struct {
    const char *text;
    size_t len;
    json_type type;
} json_value;

// Parses `len` bytes as exactly one JSON value (surrounded by white space at most). On error,
// returns false with `*error` describing it and `*offset` the byte it was found at.
bool json_parse(const char *text, size_t len, json_value *out, const char **error, size_t *offset);

// The member `key` of an object; false if `object` is not an object or has no such member.
bool json_get(json_value object, const char *key, json_value *out);

// The `index`th element of an array; false if there is none.
bool json_at(json_value array, size_t index, json_value *out);

// The number of elements of an array, or of members of an object.
size_t json_count(json_value value);

// A number's value; false if `value` is not a number.
bool json_number(json_value value, double *out);

// A boolean's value; false if `value` is not a boolean.
bool json_bool(json_value value, bool *out);

// A string's contents, unescaped, NUL-terminated, in memory from malloc (free it); NULL if
// `value` is not a string. `*len` (if not NULL) gets its length in bytes.
char *json_string(json_value value, size_t *len);

// A growable buffer of JSON text.
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} json_writer;

// Appends text as it is.
void jw_raw(json_writer *w, const char *text);
// Appends `len` bytes as a quoted JSON string, escaped.
void jw_string_n(json_writer *w, const char *s, size_t len);
// Appends a NUL-terminated string as a quoted JSON string, escaped.
void jw_string(json_writer *w, const char *s);
// Appends a number (integers print without a fraction).
void jw_number(json_writer *w, double n);
// Appends an unsigned integer exactly (a double would round above 2^53).
void jw_uint(json_writer *w, uint64_t n);
// Appends `"key":` (with a comma before it unless it follows `{`).
void jw_key(json_writer *w, const char *key);

#endif
