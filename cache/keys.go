package cache

import (
	"sync"
	"unsafe"
)

// scratchKey builds a store key in a pooled buffer, so that the hit path looks entries up
// without allocating. Its String is valid only until release: use it for look-ups, never
// for anything that outlives the call (a Set, a flight, a log line).
type scratchKey struct{ b []byte }

var keyPool = sync.Pool{New: func() any { return &scratchKey{b: make([]byte, 0, 256)} }}

func getKey(kind byte, up, repo, ref string) *scratchKey {
	k := keyPool.Get().(*scratchKey)
	k.b = append(append(append(append(append(append(append(k.b[:0], kind), 0), up...), 0), repo...), 0), ref...)
	return k
}

func (k *scratchKey) String() string { return unsafe.String(unsafe.SliceData(k.b), len(k.b)) }

func (k *scratchKey) release() { keyPool.Put(k) }
