package webhook

import (
	"context"
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"regcache/internal/feed"
)

// TestFormatCloudEvents decodes a delivery as a CloudEvents receiver does, with the
// CloudEvents SDK, and checks each attribute.
func TestFormatCloudEvents(t *testing.T) {
	rc := newReceiver(t, nil)
	d := start(t, Options{Source: "https://regcache.example.com"}, Config{URL: rc.URL, Format: FormatCloudEvents, Secret: "k"})
	e := testEvent(1)
	d.Deliver(e)
	waitFor(t, "delivery", func() bool { return d.Stats()[0].Delivered == 1 })
	r := rc.requests()[0]
	if ct := r.Header.Get("Content-Type"); ct != "application/cloudevents+json" {
		t.Fatalf("Content-Type %q", ct)
	}
	verifySignature(t, "k", r)
	ce := event.New()
	if err := json.Unmarshal(r.Body, &ce); err != nil {
		t.Fatalf("the SDK cannot decode %s: %v", r.Body, err)
	}
	if err := ce.Validate(); err != nil {
		t.Fatalf("not a valid CloudEvent: %v", err)
	}
	wantTime, _ := time.Parse(time.RFC3339, e.Time)
	if ce.SpecVersion() != "1.0" || ce.ID() != e.ID || ce.Source() != "https://regcache.example.com" ||
		ce.Type() != "io.regcache.tag.changed" || ce.Subject() != e.Image || !ce.Time().Equal(wantTime) ||
		ce.DataContentType() != "application/json" {
		t.Fatalf("attributes %s", ce.String())
	}
	var data feed.Event
	if err := ce.DataAs(&data); err != nil || !reflect.DeepEqual(data, e) {
		t.Fatalf("data %+v (%v), want the event %+v", data, err, e)
	}
}

// TestCloudEventsSourceWithoutPublicURL: the source is urn:regcache:<hostname>.
func TestCloudEventsSourceWithoutPublicURL(t *testing.T) {
	rc := newReceiver(t, nil)
	d := start(t, Options{}, Config{URL: rc.URL, Format: FormatCloudEvents})
	created := testEvent(1)
	created.Type = feed.TagCreated
	d.Deliver(created)
	waitFor(t, "delivery", func() bool { return d.Stats()[0].Delivered == 1 })
	d.Close(context.Background())
	ce := event.New()
	if err := json.Unmarshal(rc.requests()[0].Body, &ce); err != nil || ce.Validate() != nil {
		t.Fatalf("not a CloudEvent: %v", err)
	}
	host, _ := os.Hostname()
	if ce.Source() != "urn:regcache:"+host || ce.Type() != "io.regcache.tag.created" {
		t.Fatalf("source %q, type %q", ce.Source(), ce.Type())
	}
}
