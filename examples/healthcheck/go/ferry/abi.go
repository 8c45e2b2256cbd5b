// The canonical ABI between the agent and a Go plugin, written by hand for the world
// ferry:plugin/plugin@0.1.0 (wit/0.1.0/plugin.wit). Written by `ferry plugin new`; leave it as
// it is: a newer ferry writes a newer copy into a new project.
//
// Memory the agent writes into the plugin (the command, and the results of host calls) is
// allocated by cabi_realloc from a static arena, never from the Go heap: the agent calls
// cabi_realloc in the middle of a call, where the Go garbage collector must not run (it would
// call into WASI, which is not allowed there, and the instance would trap). Everything is
// copied out of the arena into Go values at once, and the arena is reused.

package ferry

import "unsafe"

// arenaSize bounds a command's payload plus the largest single result of a host call.
const arenaSize = 16 << 20

var (
	arena    [arenaSize]byte
	arenaTop uintptr
)

//go:wasmexport cabi_realloc
func cabiRealloc(oldPtr, oldSize, align, newSize uint32) uint32 {
	base := uintptr(unsafe.Pointer(&arena[0]))
	start := (base + arenaTop + uintptr(align) - 1) &^ (uintptr(align) - 1)
	end := start + uintptr(newSize)
	if end > base+arenaSize {
		// Returning 0 makes the agent fail the call with a clear trap rather than writing
		// past the arena.
		return 0
	}
	if oldPtr != 0 && oldSize != 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(uintptr(start))), newSize),
			unsafe.Slice((*byte)(unsafe.Pointer(uintptr(oldPtr))), oldSize))
	}
	arenaTop = end - base
	return uint32(start)
}

// copyBytes copies `n` bytes at `ptr` (in the arena) to the Go heap.
func copyBytes(ptr, n uint32) []byte {
	if n == 0 {
		return []byte{}
	}
	out := make([]byte, n)
	copy(out, unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), n))
	return out
}

func copyString(ptr, n uint32) string { return string(copyBytes(ptr, n)) }

func load32(ptr uint32) uint32   { return *(*uint32)(unsafe.Pointer(uintptr(ptr))) }
func load64(ptr uint32) uint64   { return *(*uint64)(unsafe.Pointer(uintptr(ptr))) }
func loadF32(ptr uint32) float32 { return *(*float32)(unsafe.Pointer(uintptr(ptr))) }
func load8(ptr uint32) uint8     { return *(*uint8)(unsafe.Pointer(uintptr(ptr))) }

// stringArgs is a string as the ABI passes it: its address and length. The string must stay
// reachable until the call returns (runtime.KeepAlive).
func stringArgs(s string) (uint32, uint32) {
	if len(s) == 0 {
		return 0, 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))), uint32(len(s))
}

func bytesArgs(b []byte) (uint32, uint32) {
	if len(b) == 0 {
		return 0, 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))), uint32(len(b))
}

// retArea is where a host call that returns more than one value writes its result; 8-aligned
// and as large as the largest such result (metrics.now's, 72 bytes; process.run's, 44).
type retArea struct{ words [10]uint64 }

func (r *retArea) ptr() uint32 { return uint32(uintptr(unsafe.Pointer(&r.words[0]))) }

// callRet is the one return area of host calls: a global, so that it never moves (a Go stack
// can), and one is enough, since a plugin makes one host call at a time.
var callRet retArea

// ferry:plugin/context@0.1.0

//go:wasmimport ferry:plugin/context@0.1.0 log
func importLog(level uint32, ptr, n uint32)

//go:wasmimport ferry:plugin/context@0.1.0 progress
func importProgress(percent uint32, ptr, n uint32)

//go:wasmimport ferry:plugin/context@0.1.0 cancelled
func importCancelled() uint32

//go:wasmimport ferry:plugin/context@0.1.0 request-data
func importRequestData(ptr, n uint32, ret uint32)

// ferry:plugin/metrics@0.1.0

//go:wasmimport ferry:plugin/metrics@0.1.0 now
func importMetricsNow(ret uint32)

//go:wasmimport ferry:plugin/metrics@0.1.0 history
func importMetricsHistory(periodSeconds uint32, ret uint32)

// ferry:plugin/kv@0.1.0

//go:wasmimport ferry:plugin/kv@0.1.0 get
func importKVGet(ptr, n uint32, ret uint32)

//go:wasmimport ferry:plugin/kv@0.1.0 set
func importKVSet(keyPtr, keyLen, valuePtr, valueLen uint32, ret uint32)

//go:wasmimport ferry:plugin/kv@0.1.0 delete
func importKVDelete(ptr, n uint32, ret uint32)

//go:wasmimport ferry:plugin/kv@0.1.0 list-keys
func importKVListKeys(ptr, n uint32, ret uint32)

// ferry:plugin/process@0.1.0

//go:wasmimport ferry:plugin/process@0.1.0 run
func importProcessRun(programPtr, programLen, argsPtr, argsLen, hasTimeout, timeoutMs uint32, ret uint32)

// ferry:plugin/handler@0.1.0

// handleRet holds the result of handle until the agent has read it (cabi_post_…).
var (
	handleRet  retArea
	handleKeep []byte
)

//go:wasmexport ferry:plugin/handler@0.1.0#handle
func exportHandle(idPtr, idLen, topicPtr, topicLen, payloadPtr, payloadLen, typePtr, typeLen uint32) uint32 {
	cmd := Command{
		ID:          copyString(idPtr, idLen),
		Topic:       copyString(topicPtr, topicLen),
		Payload:     copyBytes(payloadPtr, payloadLen),
		ContentType: copyString(typePtr, typeLen),
	}
	arenaTop = 0
	out, err := dispatch(cmd)
	// result<list<u8>, error>: the case at 0; ok's list at 4 and 8; error's case at 4 and
	// its message at 8 and 12.
	ret := handleRet.ptr()
	base := unsafe.Pointer(uintptr(ret))
	put8 := func(off uintptr, v uint8) { *(*uint8)(unsafe.Add(base, off)) = v }
	put32 := func(off uintptr, v uint32) { *(*uint32)(unsafe.Add(base, off)) = v }
	if err == nil {
		handleKeep = out
		p, n := bytesArgs(out)
		put8(0, 0)
		put32(4, p)
		put32(8, n)
		return ret
	}
	e := asError(err)
	handleKeep = []byte(e.Message)
	p, n := bytesArgs(handleKeep)
	put8(0, 1)
	put8(4, uint8(e.Kind))
	put32(8, p)
	put32(12, n)
	return ret
}

//go:wasmexport cabi_post_ferry:plugin/handler@0.1.0#handle
func exportHandlePost(uint32) {
	handleKeep = nil
}
