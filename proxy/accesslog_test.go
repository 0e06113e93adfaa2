package proxy

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"regcache/cache"
)

// accessLine writes one request's line to a fresh log in format and returns it.
func accessLine(t *testing.T, format, method, path string, rt *Route, st cache.Status, d time.Duration, at time.Time) string {
	t.Helper()
	var out bytes.Buffer
	l := NewAccessLog(&out, format)
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(path)
	ctx.Init(&req, nil, nil)
	ctx.SetStatusCode(fasthttp.StatusOK)
	l.log(&ctx, rt, st, d, at)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// The JSON line has the layout of regcache's other log lines and the request's fields.
func TestAccessLogJSONLine(t *testing.T) {
	at := time.Date(2026, 12, 2, 17, 27, 4, 123_456_789, time.UTC)
	rt := &Route{Upstream: &Upstream{Name: "lscr.io"}, Repo: "linuxserver/nginx", Ref: "latest"}
	line := accessLine(t, "json", "HEAD", "/v2/lscr.io/linuxserver/nginx/manifests/latest", rt, cache.Hit, 1234567*time.Nanosecond, at)
	want := `{"level":"info","ts":"2026-12-02T17:27:04.123Z","msg":"request","method":"HEAD",` +
		`"path":"/v2/lscr.io/linuxserver/nginx/manifests/latest","status":200,"duration":0.001234567,` +
		`"upstream":"lscr.io","repository":"linuxserver/nginx","reference":"latest","cache":"HIT"}` + "\n"
	if line != want {
		t.Fatalf("line\n%s\nwant\n%s", line, want)
	}
	// Not routed, not answered by the cache: neither part is there.
	line = accessLine(t, "json", "GET", "/v2/", &Route{}, cache.None, time.Second, at)
	if strings.Contains(line, "upstream") || strings.Contains(line, "cache") || !strings.Contains(line, `"duration":1}`) {
		t.Fatalf("unrouted line: %s", line)
	}
}

// The console line is laid out as zap's development encoder lays out a line (without the
// caller): time, level, message, then the fields as a JSON object.
func TestAccessLogConsoleLine(t *testing.T) {
	at := time.Date(2026, 12, 2, 17, 27, 4, 5_000_000, time.UTC)
	line := accessLine(t, "console", "GET", "/v2/", &Route{}, cache.None, 250*time.Millisecond, at)
	want := "2026-12-02T17:27:04.005Z\tINFO\trequest\t" + `{"method": "GET", "path": "/v2/", "status": 200, "duration": "250ms"}` + "\n"
	if line != want {
		t.Fatalf("line\n%q\nwant\n%q", line, want)
	}
}

// FuzzAccessLogPath: whatever bytes a client sends as a path, the line is one line of
// valid JSON, and the path reads back as zap's encoder would have written it (control
// characters escaped, invalid UTF-8 as U+FFFD).
func FuzzAccessLogPath(f *testing.F) {
	for _, s := range []string{"/v2/", "/v2/a\"b\\c", "/v2/\x00\x1f\x7f", "/v2/\xff\xfe", "/v2/é€𝄞", "/v2/\u2028"} {
		f.Add([]byte(s))
	}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	f.Fuzz(func(t *testing.T, path []byte) {
		got := appendJSONString(nil, path)
		if bytes.ContainsAny(got, "\n\r") {
			t.Fatalf("a line break in %q", got)
		}
		var ours string
		if err := json.Unmarshal(got, &ours); err != nil {
			t.Fatalf("%q is not a JSON string: %v", got, err)
		}
		buf, err := enc.EncodeEntry(zapcore.Entry{}, []zapcore.Field{zap.ByteString("path", path)})
		if err != nil {
			t.Fatal(err)
		}
		var theirs struct{ Path string }
		if err := json.Unmarshal(buf.Bytes(), &theirs); err != nil {
			t.Fatalf("zap's line %q: %v", buf.Bytes(), err)
		}
		if ours != theirs.Path {
			t.Fatalf("path %q reads back as %q; zap's as %q", path, ours, theirs.Path)
		}
	})
}

// appendSeconds writes what strconv writes for the duration in seconds, without floats.
func TestAppendSeconds(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 999, time.Microsecond, 1234567, time.Second, 90 * time.Second, 1500 * time.Millisecond, -3 * time.Millisecond} {
		got := string(appendSeconds(nil, d))
		var f float64
		if err := json.Unmarshal([]byte(got), &f); err != nil || f != d.Seconds() {
			t.Fatalf("%v: %q (%v), want %v", d, got, err, d.Seconds())
		}
	}
}

// writeCalls records each Write it gets, to see how lines are cut into writes.
type writeCalls struct{ calls [][]byte }

func (w *writeCalls) Write(p []byte) (int, error) {
	w.calls = append(w.calls, bytes.Clone(p))
	return len(p), nil
}

// Every write the access log makes ends at the end of a line, long lines included: a line
// cut across two writes to stderr could have another log line land inside it.
func TestAccessLogWritesWholeLines(t *testing.T) {
	w := &writeCalls{}
	l := NewAccessLog(w, "json")
	logOne := func(path string) {
		var ctx fasthttp.RequestCtx
		var req fasthttp.Request
		req.Header.SetMethod("GET")
		req.SetRequestURI(path)
		ctx.Init(&req, nil, nil)
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		l.log(&ctx, &Route{}, cache.None, time.Millisecond, time.Now())
	}
	for l.w.Available() >= 2<<10 {
		logOne("/v2/short")
	}
	logOne("/v2/" + strings.Repeat("a", 2<<10))
	logOne("/v2/" + strings.Repeat("b", 100<<10)) // longer than the whole buffer
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for i, c := range w.calls {
		if len(c) == 0 || c[len(c)-1] != '\n' {
			t.Fatalf("write %d of %d ends mid-line: ...%q", i+1, len(w.calls), c[max(0, len(c)-40):])
		}
	}
}
