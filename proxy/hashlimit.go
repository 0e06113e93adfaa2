package proxy

import (
	"sync/atomic"
	"time"
)

// hashSlots bounds the bcrypt comparisons running at once, across all clients, to the
// number of CPUs. The failure limiter rations each address, but many addresses each under
// their limit (32 x 10 failed logins) would otherwise run hundreds of comparisons at once
// and starve every other request of CPU. A comparison beyond the bound waits up to wait
// for a slot; past that its request is answered 429 TOOMANYREQUESTS, unchecked.
type hashSlots struct {
	slots chan struct{}
	wait  time.Duration
	// running and peak count comparisons in flight and the most seen at once: the bound's
	// proof in tests.
	running, peak atomic.Int32
}

// hashWait is how long a comparison waits for a slot: a few comparisons' time at the
// default cost, so a login in a short burst still gets through.
const hashWait = time.Second

func newHashSlots(n int, wait time.Duration) *hashSlots {
	return &hashSlots{slots: make(chan struct{}, max(n, 1)), wait: wait}
}

// acquire takes a slot, waiting at most h.wait; false when none came free.
func (h *hashSlots) acquire() bool {
	select {
	case h.slots <- struct{}{}:
	default:
		timer := time.NewTimer(h.wait)
		defer timer.Stop()
		select {
		case h.slots <- struct{}{}:
		case <-timer.C:
			return false
		}
	}
	n := h.running.Add(1)
	for p := h.peak.Load(); n > p && !h.peak.CompareAndSwap(p, n); p = h.peak.Load() {
	}
	return true
}

func (h *hashSlots) release() {
	h.running.Add(-1)
	<-h.slots
}
