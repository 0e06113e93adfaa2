package main

import (
	"errors"
	"time"

	"go.uber.org/zap"

	"regcache/cache"
	"regcache/configs"
	"regcache/proxy"
)

// warmStart loads cache.snapshot's file into c before anything is served, and starts its
// saves; nil without cache.snapshot. Nothing about the file stops the start: a bad one is
// logged once, with the reason, and regcache starts empty.
func warmStart(cfg *configs.Config, c *cache.Cache, ups []*proxy.Upstream, log *zap.Logger) *cache.Snapshots {
	s := cfg.Cache.Snapshot
	if s == nil {
		return nil
	}
	origins := map[string]*cache.Origin{}
	for _, u := range ups {
		origins[u.Origin.Registry.Name()] = u.Origin
	}
	start := time.Now()
	st, err := c.LoadSnapshot(s.Path, func(name string) *cache.Origin { return origins[name] }, start)
	switch {
	case errors.Is(err, cache.ErrNoSnapshot):
		log.Info("cache.snapshot: no snapshot file yet; starting empty", zap.String("path", s.Path))
	case err != nil:
		log.Warn("cache.snapshot: snapshot not loaded; starting empty", zap.String("path", s.Path), zap.Error(err))
	default:
		log.Info("cache.snapshot: loaded", zap.String("path", s.Path), zap.Int("tags", st.Tags),
			zap.Int("manifests", st.Manifests), zap.Int("blobs", st.Blobs), zap.Int("skipped", st.Skipped),
			zap.Int64("bytes", st.Bytes), zap.Duration("took", time.Since(start)))
	}
	return c.StartSnapshots(s.Path, s.Interval.D())
}
