package harness

// /metrics as Prometheus scrapes it.

import (
	"bufio"
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Metrics reads /metrics into "name{labels}" -> value; an answer other than 200 or a line
// that does not parse fails the test.
func (in *Instance) Metrics(t testing.TB) map[string]float64 {
	t.Helper()
	r := in.Do(t, http.MethodGet, "/metrics")
	if r.Status != http.StatusOK {
		t.Fatalf("/metrics: %d %s", r.Status, r.Body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(r.Body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// Metric reads one series ("regcache_upstream_inflight", or with its labels) from
// /metrics; a series that is not there fails the test.
func (in *Instance) Metric(t testing.TB, series string) float64 {
	t.Helper()
	v, ok := in.Metrics(t)[series]
	if !ok {
		t.Fatalf("/metrics has no %s", series)
	}
	return v
}
