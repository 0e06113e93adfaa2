package harness

// regcache's log output, kept for the tests that check what it says (and what it must
// never say: secrets).

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
)

// Logs collects log output from many goroutines; it is the zapcore.WriteSyncer Start
// logs to.
type Logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
	// flush writes out what the access log holds back, before the log is read.
	flush func()
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// Sync does nothing: the lines are in memory already.
func (l *Logs) Sync() error { return nil }

func (l *Logs) String() string {
	if l.flush != nil {
		l.flush()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Listening returns the listen address of the first line that says msg ("metrics
// listening"): where regcache opened a port the config left to the system.
func (l *Logs) Listening(msg string) (string, bool) {
	for _, line := range strings.Split(l.String(), "\n") {
		if addr, ok := Listening(line, msg); ok {
			return addr, true
		}
	}
	return "", false
}

// Listening returns the listen field of a JSON log line whose msg is msg.
func Listening(line, msg string) (string, bool) {
	var l struct{ Msg, Listen string }
	if json.Unmarshal([]byte(line), &l) != nil || l.Msg != msg || l.Listen == "" {
		return "", false
	}
	return l.Listen, true
}
