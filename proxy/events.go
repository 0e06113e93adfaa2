package proxy

// GET /api/v1/events: the change feed, as Server-Sent Events (live, or resumed after
// Last-Event-ID or ?since=) or, with ?format=json, as one JSON answer for scripts.

import (
	"bufio"
	"encoding/json"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"regcache/internal/feed"
)

// keepAliveEvery is how often an idle stream gets a comment line, so that proxies and
// clients on the way do not take it for dead.
const keepAliveEvery = 15 * time.Second

// parseEventFilter reads ?image= (repeatable), ?registry= and ?type=.
func parseEventFilter(args *fasthttp.Args) feed.Filter {
	var f feed.Filter
	for _, v := range args.PeekMulti("image") {
		f.Images = append(f.Images, string(v))
	}
	for _, v := range args.PeekMulti("registry") {
		f.Registries = append(f.Registries, string(v))
	}
	for _, v := range args.PeekMulti("type") {
		f.Types = append(f.Types, string(v))
	}
	return f
}

func (p *Proxy) serveEvents(ctx *fasthttp.RequestCtx) {
	args := ctx.QueryArgs()
	f := parseEventFilter(args)
	since := string(args.Peek("since"))
	if id := ctx.Request.Header.Peek("Last-Event-ID"); len(id) > 0 {
		since = string(id)
	}
	if string(args.Peek("format")) == "json" {
		events := p.events.SinceOrReset(since)
		out := make([]feed.Event, 0, len(events))
		for _, e := range events {
			if f.Match(e) {
				out = append(out, e)
			}
		}
		// next resumes after everything this answer covered, filtered out or not.
		next := since
		if n := len(events); n > 0 {
			next = events[n-1].ID
		} else if since == "" {
			next = p.events.Last()
		}
		writeJSON(ctx, struct {
			Events []feed.Event `json:"events"`
			Next   string       `json:"next"`
		}{out, next})
		return
	}
	first, sub := p.events.Subscribe(since)
	ctx.SetContentType("text/event-stream")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	// The connection serves this stream and nothing after it: when the subscription ends
	// (shutdown, or the subscriber fell behind) it is closed, which also frees a writer
	// blocked on a client that stopped reading.
	ctx.SetConnectionClose()
	conn := ctx.Conn()
	go func() {
		<-sub.Done()
		_ = conn.Close()
	}()
	// The stream outlives the handler: fasthttp runs the writer once the headers are out,
	// until it returns (the client went away, the subscriber fell behind, or shutdown).
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer sub.Cancel()
		// seen is the last event this stream was handed, shown or filtered out; sent, the
		// last id it wrote. A keep-alive carries seen as a bare id line, which moves the
		// client's Last-Event-ID past filtered-out events without an event (the SSE rule):
		// a narrow filter resumes where it was, not from its last match. A stream opened
		// without an id starts with one (where its subscription starts), so that a client
		// that loses it before its first event resumes rather than starting anew and
		// missing what was published in between (a rolling restart ends every stream).
		var seen, sent string
		if since == "" {
			seen = sub.Start
		}
		send := func(e feed.Event) error {
			seen = e.ID
			if !f.Match(e) {
				return nil
			}
			sent = e.ID
			data, _ := json.Marshal(e)
			_, _ = w.WriteString("id: " + strings.ReplaceAll(e.ID, "\n", "") + "\ndata: ")
			_, _ = w.Write(data)
			_, _ = w.WriteString("\n\n")
			return w.Flush()
		}
		_, _ = w.WriteString(": regcache change feed\n\n")
		if seen != sent {
			_, _ = w.WriteString("id: " + seen + "\n\n")
			sent = seen
		}
		for _, e := range first {
			if send(e) != nil {
				return
			}
		}
		if w.Flush() != nil {
			return
		}
		tick := time.NewTicker(keepAliveEvery)
		defer tick.Stop()
		for {
			select {
			case e, ok := <-sub.C:
				if !ok {
					return // fell behind (its last id resumes it), or shutdown
				}
				if send(e) != nil {
					return
				}
			case <-tick.C:
				if seen != sent {
					_, _ = w.WriteString("id: " + seen + "\n\n")
					sent = seen
				}
				if _, err := w.WriteString(": keep-alive\n\n"); err != nil || w.Flush() != nil {
					return
				}
			}
		}
	})
}
