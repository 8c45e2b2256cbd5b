// Package ferry is the ferry plugin interface (ferry:plugin/plugin@0.1.0) for Go: register a
// handler with Handle, and call the agent with Log, Progress, Cancelled, RequestData and the
// metrics, kv and process functions. Written by `ferry plugin new`; leave it as it is.
//
// Each command runs in a fresh instance of the plugin: nothing carries over between commands
// except what a plugin stores with KVSet.
package ferry

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"
)

// Command is one command, as the operator sent it.
type Command struct {
	// ID is the command's correlation id, unique per command.
	ID string
	// Topic is the topic it was sent on.
	Topic string
	// Payload is its input; ContentType says what it is (empty when the sender gave none).
	Payload     []byte
	ContentType string
}

// ErrorKind is why a command did not succeed; the agent reports it as the command's outcome.
type ErrorKind uint8

const (
	// KindInvalidInput: the payload is malformed or missing something.
	KindInvalidInput ErrorKind = iota
	// KindDenied: the command asks for something the plugin may not do.
	KindDenied
	// KindFailed: the command was valid but could not be carried out.
	KindFailed
	// KindCancelled: the plugin saw Cancelled() turn true and stopped.
	KindCancelled
	// KindTimedOut: an operation the plugin waited on took too long.
	KindTimedOut
)

// Error is a command's failure, with a message for the operator.
type Error struct {
	Kind    ErrorKind
	Message string
}

func (e *Error) Error() string { return e.Message }

// InvalidInputf fails the command as invalid-input; say which field and what was expected.
func InvalidInputf(format string, args ...any) *Error {
	return &Error{KindInvalidInput, fmt.Sprintf(format, args...)}
}

// Deniedf fails the command as denied.
func Deniedf(format string, args ...any) *Error {
	return &Error{KindDenied, fmt.Sprintf(format, args...)}
}

// Failedf fails the command as failed.
func Failedf(format string, args ...any) *Error {
	return &Error{KindFailed, fmt.Sprintf(format, args...)}
}

// ErrCancelled ends a command the operator cancelled.
var ErrCancelled = &Error{Kind: KindCancelled}

// ErrTimedOut ends a command whose operation took too long.
var ErrTimedOut = &Error{Kind: KindTimedOut}

// asError maps any error to a command failure: an *Error as it is, anything else as failed.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{KindFailed, err.Error()}
}

var handler func(Command) ([]byte, error)

// Handle registers the function that handles every command. Call it from an init function:
// a plugin's main never runs.
func Handle(h func(Command) ([]byte, error)) { handler = h }

func dispatch(cmd Command) ([]byte, error) {
	if handler == nil {
		return nil, Failedf("the plugin registered no handler: call ferry.Handle in an init function")
	}
	return handler(cmd)
}

// Level is how important a log line is.
type Level uint8

const (
	Trace Level = iota
	Debug
	Info
	Warn
	ErrorLevel
)

// Log adds a line to the command's log, which the agent streams to the operator.
func Log(level Level, message string) {
	p, n := stringArgs(message)
	importLog(uint32(level), p, n)
	runtime.KeepAlive(message)
}

// Infof logs at info.
func Infof(format string, args ...any) { Log(Info, fmt.Sprintf(format, args...)) }

// Warnf logs at warn.
func Warnf(format string, args ...any) { Log(Warn, fmt.Sprintf(format, args...)) }

// Progress reports how far the command has got, from 0 to 100, and the current step.
func Progress(percent uint8, message string) {
	p, n := stringArgs(message)
	importProgress(uint32(percent), p, n)
	runtime.KeepAlive(message)
}

// Cancelled says whether the operator cancelled the command; return ErrCancelled when it is.
func Cancelled() bool { return importCancelled() != 0 }

// RequestData asks the server for data by key (granted with request_data = true).
func RequestData(key string) ([]byte, error) {
	ret := &callRet
	p, n := stringArgs(key)
	mark := arenaTop
	importRequestData(p, n, ret.ptr())
	runtime.KeepAlive(key)
	defer func() { arenaTop = mark }()
	r := ret.ptr()
	if load8(r) != 0 {
		return nil, errors.New(copyString(load32(r+4), load32(r+8)))
	}
	return copyBytes(load32(r+4), load32(r+8)), nil
}

// Sample is one measurement of the host and of the agent's own process.
type Sample struct {
	TimestampMs      uint64  `json:"timestamp_ms"`
	CPUPercent       float32 `json:"cpu_percent"`
	MemoryUsedBytes  uint64  `json:"memory_used_bytes"`
	MemoryTotalBytes uint64  `json:"memory_total_bytes"`
	DiskUsedBytes    uint64  `json:"disk_used_bytes"`
	DiskTotalBytes   uint64  `json:"disk_total_bytes"`
	AgentCPUPercent  float32 `json:"agent_cpu_percent"`
	AgentMemoryBytes uint64  `json:"agent_memory_bytes"`
}

// sampleSize is a sample's size in the ABI: 64 bytes, 8-aligned.
const sampleSize = 64

func loadSample(p uint32) Sample {
	return Sample{
		TimestampMs:      load64(p),
		CPUPercent:       loadF32(p + 8),
		MemoryUsedBytes:  load64(p + 16),
		MemoryTotalBytes: load64(p + 24),
		DiskUsedBytes:    load64(p + 32),
		DiskTotalBytes:   load64(p + 40),
		AgentCPUPercent:  loadF32(p + 48),
		AgentMemoryBytes: load64(p + 56),
	}
}

// MetricsNow takes a sample now (granted with metrics = true).
func MetricsNow() (Sample, error) {
	ret := &callRet
	mark := arenaTop
	defer func() { arenaTop = mark }()
	importMetricsNow(ret.ptr())
	r := ret.ptr()
	if load8(r) != 0 {
		return Sample{}, errors.New(copyString(load32(r+8), load32(r+12)))
	}
	return loadSample(r + 8), nil
}

// MetricsHistory returns the samples of the last periodSeconds, oldest first (granted with
// metrics = true).
func MetricsHistory(periodSeconds uint32) ([]Sample, error) {
	ret := &callRet
	mark := arenaTop
	defer func() { arenaTop = mark }()
	importMetricsHistory(periodSeconds, ret.ptr())
	r := ret.ptr()
	if load8(r) != 0 {
		return nil, errors.New(copyString(load32(r+4), load32(r+8)))
	}
	p, n := load32(r+4), load32(r+8)
	samples := make([]Sample, n)
	for i := range samples {
		samples[i] = loadSample(p + uint32(i)*sampleSize)
	}
	return samples, nil
}

// KVGet returns the value stored under key, and whether there is one (granted with kv = true).
func KVGet(key string) ([]byte, bool, error) {
	ret := &callRet
	mark := arenaTop
	defer func() { arenaTop = mark }()
	p, n := stringArgs(key)
	importKVGet(p, n, ret.ptr())
	runtime.KeepAlive(key)
	r := ret.ptr()
	if load8(r) != 0 {
		return nil, false, errors.New(copyString(load32(r+4), load32(r+8)))
	}
	if load8(r+4) == 0 {
		return nil, false, nil
	}
	return copyBytes(load32(r+8), load32(r+12)), true, nil
}

// KVSet stores value under key (granted with kv = true).
func KVSet(key string, value []byte) error {
	ret := &callRet
	mark := arenaTop
	defer func() { arenaTop = mark }()
	kp, kn := stringArgs(key)
	vp, vn := bytesArgs(value)
	importKVSet(kp, kn, vp, vn, ret.ptr())
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	r := ret.ptr()
	if load8(r) != 0 {
		return errors.New(copyString(load32(r+4), load32(r+8)))
	}
	return nil
}

// KVDelete removes key; true when it was there (granted with kv = true).
func KVDelete(key string) (bool, error) {
	ret := &callRet
	mark := arenaTop
	defer func() { arenaTop = mark }()
	p, n := stringArgs(key)
	importKVDelete(p, n, ret.ptr())
	runtime.KeepAlive(key)
	r := ret.ptr()
	if load8(r) != 0 {
		return false, errors.New(copyString(load32(r+4), load32(r+8)))
	}
	return load8(r+4) != 0, nil
}

// KVListKeys returns the keys that start with prefix, in byte order (granted with kv = true).
func KVListKeys(prefix string) ([]string, error) {
	ret := &callRet
	mark := arenaTop
	defer func() { arenaTop = mark }()
	p, n := stringArgs(prefix)
	importKVListKeys(p, n, ret.ptr())
	runtime.KeepAlive(prefix)
	r := ret.ptr()
	if load8(r) != 0 {
		return nil, errors.New(copyString(load32(r+4), load32(r+8)))
	}
	list, count := load32(r+4), load32(r+8)
	keys := make([]string, count)
	for i := range keys {
		entry := list + uint32(i)*8
		keys[i] = copyString(load32(entry), load32(entry+4))
	}
	return keys, nil
}

// StopReason says why the agent stopped a program before it ended by itself.
type StopReason uint8

const (
	// StoppedByTimeout: its timeout, or the command's deadline, passed.
	StoppedByTimeout StopReason = iota
	// StoppedByCancel: the command was cancelled; return ErrCancelled.
	StoppedByCancel
)

// Exit is how a program ended.
type Exit struct {
	// Code is its exit code, when it exited (0 is success).
	Code *int32
	// Signal is the signal that ended it, if one did (9 when the agent killed it).
	Signal *int32
	// Stopped is set when the agent stopped it, and says why.
	Stopped *StopReason
	// Stdout is the start of its standard output (all of it also went to the command's log).
	Stdout []byte
	// StdoutTruncated says whether its output was longer than Stdout.
	StdoutTruncated bool
	// StderrTail is the last few lines of its standard error.
	StderrTail []string
	// Stderr is the start of its standard error.
	Stderr []byte
	// StderrTruncated says whether its standard error was longer than Stderr.
	StderrTruncated bool
}

// Success says whether it exited by itself with status 0.
func (e Exit) Success() bool { return e.Code != nil && *e.Code == 0 && e.Stopped == nil }

// RunProcess runs a granted program (its absolute path, as listed in the manifest's
// `programs`) with args and waits until it ends, or until timeoutMs (0: no timeout of its own;
// the command's deadline still applies). An error means it did not run.
func RunProcess(program string, args []string, timeoutMs uint32) (Exit, error) {
	ret := &callRet
	mark := arenaTop
	defer func() { arenaTop = mark }()
	// list<string>: consecutive (address, length) pairs.
	pairs := make([]uint32, 2*len(args))
	for i, arg := range args {
		pairs[2*i], pairs[2*i+1] = stringArgs(arg)
	}
	var pairsPtr uint32
	if len(pairs) > 0 {
		pairsPtr = uint32(uintptr(unsafe.Pointer(&pairs[0])))
	}
	pp, pn := stringArgs(program)
	var hasTimeout uint32
	if timeoutMs > 0 {
		hasTimeout = 1
	}
	importProcessRun(pp, pn, pairsPtr, uint32(len(args)), hasTimeout, timeoutMs, ret.ptr())
	runtime.KeepAlive(program)
	runtime.KeepAlive(args)
	runtime.KeepAlive(pairs)
	r := ret.ptr()
	if load8(r) != 0 {
		return Exit{}, errors.New(copyString(load32(r+4), load32(r+8)))
	}
	// The exit record at 4: code (option<s32>) at +0, signal at +8, stopped (option<enum>) at
	// +16, stdout at +20, stdout-truncated at +28, stderr-tail at +32, stderr at +40,
	// stderr-truncated at +48.
	e := r + 4
	optional := func(at uint32) *int32 {
		if load8(at) == 0 {
			return nil
		}
		v := int32(load32(at + 4))
		return &v
	}
	exit := Exit{
		Code:            optional(e),
		Signal:          optional(e + 8),
		Stdout:          copyBytes(load32(e+20), load32(e+24)),
		StdoutTruncated: load8(e+28) != 0,
		Stderr:          copyBytes(load32(e+40), load32(e+44)),
		StderrTruncated: load8(e+48) != 0,
	}
	if load8(e+16) != 0 {
		reason := StopReason(load8(e + 17))
		exit.Stopped = &reason
	}
	tail, lines := load32(e+32), load32(e+36)
	for i := uint32(0); i < lines; i++ {
		exit.StderrTail = append(exit.StderrTail, copyString(load32(tail+8*i), load32(tail+8*i+4)))
	}
	return exit, nil
}
