package main

// One measurement from the load CPU (wrk for GET, the Go load tool for HEAD), its parse,
// and the median of a scenario's rounds.

import (
	"context"
	"encoding/json"
	"log"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"
)

type result struct{ rps, p50, p99 float64 }

func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	return result{pick(func(r result) float64 { return r.rps }), pick(func(r result) float64 { return r.p50 }), pick(func(r result) float64 { return r.p99 })}
}

// load runs one measurement from the load CPU: wrk for GET, the Go tool for HEAD.
func load(method, url, accept string) result {
	if method == "HEAD" {
		var r struct {
			RPS float64 `json:"rps"`
			P50 float64 `json:"p50_ms"`
			P99 float64 `json:"p99_ms"`
		}
		out := loadTool("http", "-url", url, "-method", "HEAD", "-c", strconv.Itoa(*conns), "-d", duration.String(),
			"-H", "Accept: "+accept, "-H", "Authorization: Bearer "+benchToken)
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			log.Fatalf("load http: %v: %s", err, out)
		}
		return result{r.RPS, r.P50, r.P99}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *duration+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "taskset", "-c", loadCPU, "wrk", "-t1", "-c"+strconv.Itoa(*conns), "-d"+duration.String(), "--latency",
		"-H", "Accept: "+accept, "-H", "Authorization: Bearer "+benchToken, url).CombinedOutput()
	if err != nil {
		log.Fatalf("wrk %s: %v\n%s", url, err, out)
	}
	return parseWrk(string(out))
}

var (
	reRPS = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	reLat = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$`)
	reNon = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func parseWrk(out string) result {
	if m := reNon.FindStringSubmatch(out); m != nil {
		log.Fatalf("wrk saw error answers:\n%s", out)
	}
	var r result
	if m := reRPS.FindStringSubmatch(out); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	}
	for _, m := range reLat.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if m[1] == "50" {
			r.p50 = v
		} else {
			r.p99 = v
		}
	}
	return r
}

func loadTool(args ...string) string {
	full := append([]string{"-c", loadCPU, filepath.Join(*bin, "load")}, args...)
	out, err := exec.Command("taskset", full...).Output()
	if err != nil {
		log.Fatalf("load %v: %v", args, err)
	}
	return string(out)
}
