package config

import "testing"

// FuzzParsePlugin: any file is a configuration or an error naming a key, never a panic.
func FuzzParsePlugin(f *testing.F) {
	f.Add([]byte("redis_queue:\n  event:\n    event_topic_maps:\n      ^a: b-$wallet_id\n    deliver-webhook: true\n"))
	f.Add([]byte("redis_queue: [1, 2]\n"))
	f.Add([]byte("a: &x {b: *x}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePlugin(b)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if p.WebhookTopicMaps == nil {
			t.Fatal("no webhook topic maps")
		}
	})
}
