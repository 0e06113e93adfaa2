package main

// The processes a run starts: each server pinned to the server CPU in its own process
// group, its output in a file of its own, waited for until it answers, and all killed at
// the end (or on a signal).

import (
	"bufio"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func cleanup() {
	for _, p := range procs {
		if p.Process != nil {
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			_, _ = p.Process.Wait()
		}
	}
	procs = nil
	_ = os.RemoveAll(work)
}

// binary is the path of one of the binaries bench/run.sh built.
func binary(name string) string { return filepath.Join(*bin, name) }

// start runs a server pinned to the server CPU, in its own process group; its stdout and
// stderr go to one log file under the work directory (logPath).
func start(name string, args ...string) *exec.Cmd {
	full := append([]string{"-c", serverCPU, name}, args...)
	cmd := exec.Command("taskset", full...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logf, err := os.Create(filepath.Join(work, filepath.Base(name)+"-"+strconv.Itoa(len(procs))+".log"))
	if err != nil {
		log.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		log.Fatalf("start %s: %v", name, err)
	}
	procs = append(procs, cmd)
	return cmd
}

// logPath is the file a process started by start writes its stdout and stderr to.
func logPath(cmd *exec.Cmd) string { return cmd.Stdout.(*os.File).Name() }

func waitHTTP(url string) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return
		}
	}
	log.Fatalf("%s did not come up (logs in %s)", url, work)
}

func writeFile(path, text string) string {
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		log.Fatal(err)
	}
	return path
}

// peakRSS reads VmHWM, the process's peak resident set, from /proc.
func peakRSS(cmd *exec.Cmd) string {
	// taskset execs the target, so the pid is regcache's own.
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "VmHWM:") {
			return strings.TrimSpace(strings.TrimPrefix(sc.Text(), "VmHWM:"))
		}
	}
	return "unknown"
}
