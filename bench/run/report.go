package main

// The hit-path report: one Markdown table of medians, grouped by scenario, with each
// regcache mode's rate set against the ceiling and against the nginx static file that logs
// as it does; then how much log each logging server wrote.

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
)

type scenario struct{ name, method, path string }

type key struct{ server, scenario string }

func printTable(scenarios []scenario, servers []server, results map[key][]result) {
	fmt.Printf("\n### Hit path, %d connections, %s per run, median of %d interleaved rounds\n\n", *conns, *duration, *rounds)
	fmt.Println("Metrics and client auth on in every regcache. vs ceiling: req/s ÷ the fasthttp ceiling's. " +
		"vs nginx: a regcache mode's req/s ÷ the nginx static file's that logs as it does " +
		"(access log on for regcache's defaults, off for the other two).")
	fmt.Println()
	fmt.Println("| scenario | server | req/s | p50 ms | p99 ms | vs ceiling | vs nginx |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, sc := range scenarios {
		medians := map[string]result{}
		for _, srv := range servers {
			if rs, ok := results[key{srv.name, sc.name}]; ok {
				medians[srv.name] = median(rs)
			}
		}
		for _, srv := range servers {
			m, ok := medians[srv.name]
			if !ok {
				continue
			}
			name, rps := srv.name, thousands(m.rps)
			vsNginx := "—"
			if srv.regcache {
				name, rps = "**"+name+"**", "**"+rps+"**"
				vsNginx = ratio(m, medians, srv.anchor)
			}
			fmt.Printf("| %s | %s | %s | %.3f | %.3f | %s | %s |\n", sc.name, name, rps, m.p50, m.p99, ratio(m, medians, ceilingName), vsNginx)
		}
	}
}

// ratio is m's req/s over anchor's, or a dash when anchor was not measured.
func ratio(m result, medians map[string]result, anchor string) string {
	a, ok := medians[anchor]
	if !ok || a.rps == 0 {
		return "—"
	}
	r := m.rps / a.rps
	if r < 0.1 {
		return fmt.Sprintf("%.3fx", r)
	}
	return fmt.Sprintf("%.2fx", r)
}

// thousands formats n rounded, with commas: 88473.4 → "88,473".
func thousands(n float64) string {
	s := strconv.FormatInt(int64(n+0.5), 10)
	var b []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b = append(b, ',')
		}
		b = append(b, s[i])
	}
	return string(b)
}

// printLogs says how much each logging server wrote to its file during the run: proof that
// the defaults row really wrote its access log, and what a line costs on disk.
func printLogs(servers []server) {
	fmt.Printf("\nLog written to files during the run (each regcache's stdout and stderr; nginx's access_log, buffer=64k):\n\n")
	for _, srv := range servers {
		if srv.logFile == "" {
			continue
		}
		lines, size, err := countLines(srv.logFile)
		if err != nil {
			fmt.Printf("- %s: %v\n", srv.name, err)
			continue
		}
		fmt.Printf("- %s: %s line(s), %s", srv.name, thousands(float64(lines)), megabytes(size))
		if lines > 0 {
			fmt.Printf(", %d B a line", size/lines)
		}
		fmt.Println()
	}
}

// megabytes is n in MB, or in bytes when under a tenth of one.
func megabytes(n int64) string {
	if n < 100_000 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

func countLines(path string) (lines, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		n, err := f.Read(buf)
		lines += int64(bytes.Count(buf[:n], []byte{'\n'}))
		size += int64(n)
		if err == io.EOF {
			return lines, size, nil
		}
		if err != nil {
			return lines, size, err
		}
	}
}
