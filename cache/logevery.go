package cache

import (
	"sync"
	"sync/atomic"
	"time"
)

// every lets a thing happen at most once per interval: a warning that every failing
// request would otherwise repeat, or a probe of a Redis that is down. Lock-free, because
// failure paths run from many goroutines at once.
type every struct{ last atomic.Int64 } // unix nanos of the last time it was due

// due reports whether interval has passed since the last time, and if so counts now as
// that time (for one caller only).
func (e *every) due(interval time.Duration) bool {
	now := time.Now().UnixNano()
	last := e.last.Load()
	return now-last >= int64(interval) && e.last.CompareAndSwap(last, now)
}

// mark counts now as the last time.
func (e *every) mark() { e.last.Store(time.Now().UnixNano()) }

// credentialLogInterval spaces out the warnings of an upstream refusing our credentials:
// every request during such an outage fails the same way.
const credentialLogInterval = 30 * time.Second

// perUpstream is an every for each upstream.
type perUpstream struct{ m sync.Map } // upstream name -> *every

func (p *perUpstream) due(up string, interval time.Duration) bool {
	e, _ := p.m.LoadOrStore(up, new(every))
	return e.(*every).due(interval)
}
