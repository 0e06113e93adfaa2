package cache

import (
	"sync"
	"time"
)

// credentialLogInterval spaces out the warnings of an upstream refusing our credentials:
// every request during such an outage fails the same way.
const credentialLogInterval = 30 * time.Second

// logEvery lets a warning through once per credentialLogInterval per upstream. It is on
// failure paths only.
type logEvery struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// due reports whether up's warning may be logged now, and if so counts it as logged.
func (l *logEvery) due(up string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[up]; ok && now.Sub(t) < credentialLogInterval {
		return false
	}
	if l.last == nil {
		l.last = map[string]time.Time{}
	}
	l.last[up] = now
	return true
}
