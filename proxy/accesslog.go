package proxy

// The access log: one line per request, in the layout of regcache's other log lines (zap's
// JSON or console encoding), but encoded by hand into a buffer that is written out at
// least once a second and on Close. A hit costs no allocation and no write system call:
// with zap, every line built a slice of fields and boxed the byte strings, and every line
// was its own write to an unbuffered stderr, which took about 40% of a hit's throughput.

import (
	"bufio"
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"regcache/cache"
)

// accessLogFlushEvery bounds how long a line may wait in the buffer.
const accessLogFlushEvery = time.Second

// accessLogBuffer is the buffer's size: a few hundred lines, written in one system call.
const accessLogBuffer = 64 << 10

// AccessLog writes the request lines. Its zero value is not usable: use NewAccessLog.
type AccessLog struct {
	mu      sync.Mutex
	out     io.Writer
	w       *bufio.Writer
	console bool
	closed  bool
	stop    chan struct{}
	done    chan struct{}
	// second and secondText are the last second a line was written in and its text up to
	// the seconds, "2006-01-02T15:04:05"; zone is its zone suffix ("Z", "+0100"). A line
	// formats its milliseconds only: formatting the whole time took a fifth of a line.
	second     int64
	secondText []byte
	zone       []byte
}

// NewAccessLog writes request lines to w, in format "json" (zap's production layout:
// level, ts, msg, then the request's fields) or "console" (zap's development layout, tab
// separated), and flushes them at least once a second until Close.
func NewAccessLog(w io.Writer, format string) *AccessLog {
	l := &AccessLog{out: w, w: bufio.NewWriterSize(w, accessLogBuffer), console: format == "console",
		stop: make(chan struct{}), done: make(chan struct{})}
	go l.flushEvery(accessLogFlushEvery)
	return l
}

func (l *AccessLog) flushEvery(d time.Duration) {
	defer close(l.done)
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.Flush()
		}
	}
}

// Flush writes out what the buffer holds.
func (l *AccessLog) Flush() {
	l.mu.Lock()
	_ = l.flush()
	l.mu.Unlock()
}

// flush writes the buffer out, with mu held. A failed write (a full disk, a closed pipe)
// loses what the buffer held, but not the lines after it: bufio would otherwise keep the
// error and refuse every later write.
func (l *AccessLog) flush() error {
	err := l.w.Flush()
	if err != nil {
		l.w.Reset(l.out)
	}
	return err
}

// Close flushes the last lines and stops the flusher; lines after it are dropped. The
// server is shut down first, so no request is answered after Close.
func (l *AccessLog) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	err := l.flush()
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	return err
}

// maxAccessLine is room enough for a line with a long path: with less than this left in
// the buffer, it is flushed first, so a line is appended in place, without allocating.
const maxAccessLine = 1 << 10

// log writes the line for one answered request, at (the request's arrival plus d: no
// clock read of its own).
func (l *AccessLog) log(ctx *fasthttp.RequestCtx, rt *Route, st cache.Status, d time.Duration, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	if l.w.Available() < maxAccessLine {
		_ = l.flush()
	}
	b := l.w.AvailableBuffer()
	if l.console {
		b = l.appendTime(b, at)
		b = append(b, "\tINFO\trequest\t{"...)
	} else {
		b = append(b, `{"level":"info","ts":"`...)
		b = l.appendTime(b, at)
		b = append(b, `","msg":"request",`...)
	}
	b = l.field(b, "method", false)
	b = appendJSONString(b, ctx.Method())
	b = l.field(b, "path", true)
	b = appendJSONString(b, ctx.URI().PathOriginal())
	b = l.field(b, "status", true)
	b = strconv.AppendInt(b, int64(ctx.Response.StatusCode()), 10)
	b = l.field(b, "duration", true)
	if l.console {
		// As zap's development config writes a duration: "250ms" (one allocation, in a
		// format meant for people reading a terminal).
		b = appendJSONString(b, s2b(d.String()))
	} else {
		b = appendSeconds(b, d) // seconds, as zap's production config writes a duration
	}
	if rt.Upstream != nil {
		b = l.field(b, "upstream", true)
		b = appendJSONString(b, s2b(rt.Upstream.Name))
		b = l.field(b, "repository", true)
		b = appendJSONString(b, s2b(rt.Repo))
		b = l.field(b, "reference", true)
		b = appendJSONString(b, s2b(rt.Ref))
	}
	if st < cache.None {
		b = l.field(b, "cache", true)
		b = appendJSONString(b, xCache[st])
	}
	b = append(b, "}\n"...)
	if len(b) > l.w.Available() {
		// A line longer than the room left (a long path grew it past maxAccessLine) goes
		// out whole after what is buffered: bufio would split it across two writes, and
		// another log line written between them would land inside it.
		_ = l.flush()
	}
	_, _ = l.w.Write(b)
}

// appendTime appends t in zap's ISO8601 layout ("2006-01-02T15:04:05.000Z0700"), which
// regcache's other log lines use, formatting the date and time of day once per second.
func (l *AccessLog) appendTime(b []byte, t time.Time) []byte {
	if sec := t.Unix(); sec != l.second || l.secondText == nil {
		l.second = sec
		l.secondText = t.AppendFormat(l.secondText[:0], "2006-01-02T15:04:05")
		l.zone = t.AppendFormat(l.zone[:0], "Z0700")
	}
	b = append(b, l.secondText...)
	ms := t.Nanosecond() / int(time.Millisecond)
	b = append(b, '.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
	return append(b, l.zone...)
}

// appendSeconds appends d in seconds as a decimal ("0.000123456"), without the float
// formatting that would cost as much as the rest of the line.
func appendSeconds(b []byte, d time.Duration) []byte {
	if d < 0 {
		b = append(b, '-')
		d = -d
	}
	b = strconv.AppendInt(b, int64(d/time.Second), 10)
	frac := int64(d % time.Second)
	if frac == 0 {
		return b
	}
	var digits [10]byte
	digits[0] = '.'
	for i := 9; i >= 1; i-- {
		digits[i] = byte('0' + frac%10)
		frac /= 10
	}
	n := 10
	for digits[n-1] == '0' {
		n--
	}
	return append(b, digits[:n]...)
}

// field appends a key and its colon, after a separator when it is not the first.
func (l *AccessLog) field(b []byte, key string, sep bool) []byte {
	if sep {
		b = append(b, ',')
		if l.console {
			b = append(b, ' ')
		}
	}
	b = append(b, '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	if l.console {
		b = append(b, ' ')
	}
	return b
}

const hexDigits = "0123456789abcdef"

// jsonSafe marks the bytes that go into a JSON string as they are: printable ASCII but
// the quote and the backslash.
var jsonSafe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString appends s as a JSON string, escaped as zap escapes: quotes, backslashes
// and control characters, and invalid UTF-8 as U+FFFD. A path is the client's own bytes.
func appendJSONString(b, s []byte) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		// The run that needs no escaping (all of it, for a valid name) goes in at once.
		j := i
		for j < len(s) && jsonSafe[s[j]] {
			j++
		}
		b = append(b, s[i:j]...)
		if i = j; i == len(s) {
			break
		}
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRune(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		}
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
		i++
	}
	return append(b, '"')
}
