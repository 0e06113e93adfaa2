package cache

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

// BenchmarkTagEntryMemory reports what one cached tag entry costs beyond any manifest
// body (the entry, its digest string, and ristretto's own bookkeeping), measured over
// 100,000 entries, as the heap grows when they are stored. Run with
// go test -run XXX -bench TagEntryMemory ./cache (one measurement whatever b.N: a second
// cache in the same heap would blur it).
func BenchmarkTagEntryMemory(b *testing.B) {
	const n = 100_000
	for i := 0; i < 1; i++ {
		c, err := New(Config{MaxSize: 1 << 30, MaxStale: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		keys := make([]string, n)
		for j := range keys {
			keys[j] = tagKey("docker.io", fmt.Sprintf("library/app-%06d", j), "latest")
		}
		now := time.Now()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		stored := 0
		for j, k := range keys {
			d := digest.FromString(k)
			e := &TagEntry{Descriptor: upstream.Descriptor{MediaType: upstream.MediaTypeOCIIndex, Digest: d, Size: 1609}, FetchedAt: now}
			for !c.store.rc.SetWithTTL(k, e, int64(len(k))+entryOverhead, 0) {
				c.store.rc.Wait() // the set buffer was full: let it drain, then retry
			}
			if j%1000 == 999 {
				c.store.rc.Wait()
			}
		}
		c.store.rc.Wait()
		runtime.GC()
		runtime.ReadMemStats(&after)
		for _, k := range keys {
			if c.store.tag(k) != nil {
				stored++
			}
		}
		if stored < n*99/100 {
			b.Fatalf("only %d of %d entries stayed", stored, n)
		}
		perEntry := float64(after.HeapAlloc-before.HeapAlloc) / float64(stored)
		b.ReportMetric(perEntry, "B/entry")
		b.ReportMetric(float64(stored), "entries")
		runtime.KeepAlive(keys)
		c.Close()
	}
}
