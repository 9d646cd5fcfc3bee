package config

import (
	"strings"
	"testing"
	"time"
)

func TestLoadDeliverDefaults(t *testing.T) {
	c, err := LoadDeliver(MapEnv(map[string]string{"REDIS_SERVER_URL": "redis://u:p@127.0.0.1:6379"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Redis.TopicPrefix != "acapy" || c.Concurrency != 256 || c.Batch != 256 || c.Timeout != 10*time.Second ||
		c.Mode != "at-least-once" || c.DropExhausted || c.Status.Enabled() {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestLoadDeliverErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		env map[string]string
		key string
	}{
		{map[string]string{}, "REDIS_SERVER_URL"},
		{map[string]string{"REDIS_SERVER_URL": "localhost:6379"}, "REDIS_SERVER_URL"},
		{map[string]string{"REDIS_SERVER_URL": "http://h:1"}, "REDIS_SERVER_URL"},
		{map[string]string{"REDIS_SERVER_URL": "redis://:6379"}, "REDIS_SERVER_URL"},
		{map[string]string{"REDIS_SERVER_URL": "redis://h:99999"}, "REDIS_SERVER_URL"},
		{map[string]string{"REDIS_SERVER_URL": "redis://h", "HERALD_CONCURRENCY": "0"}, "HERALD_CONCURRENCY"},
		{map[string]string{"REDIS_SERVER_URL": "redis://h", "HERALD_TIMEOUT": "soon"}, "HERALD_TIMEOUT"},
		{map[string]string{"REDIS_SERVER_URL": "redis://h", "HERALD_DELIVERY_MODE": "maybe"}, "HERALD_DELIVERY_MODE"},
		{map[string]string{"REDIS_SERVER_URL": "redis://h", "HERALD_ON_EXHAUSTED": "cry"}, "HERALD_ON_EXHAUSTED"},
		{map[string]string{"REDIS_SERVER_URL": "redis://h", "HERALD_BATCH": "5000"}, "HERALD_BATCH"},
		{map[string]string{"REDIS_SERVER_URL": "redis://h", "STATUS_ENDPOINT_HOST": "0.0.0.0",
			"STATUS_ENDPOINT_PORT": "http", "STATUS_ENDPOINT_API_KEY": "k"}, "STATUS_ENDPOINT_PORT"},
	} {
		_, err := LoadDeliver(MapEnv(tc.env))
		if err == nil || !strings.HasPrefix(err.Error(), tc.key+": ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error %v, want one line starting with %s", tc.env, err, tc.key)
		}
	}
	_, err := LoadDeliver(MapEnv(map[string]string{"REDIS_SERVER_URL": "http://user:secret@h"}))
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("the password must not appear in the error: %v", err)
	}
}

func TestDurationsAcceptSeconds(t *testing.T) {
	c, err := LoadDeliver(MapEnv(map[string]string{"REDIS_SERVER_URL": "rediss://h:6380", "HERALD_TIMEOUT": "2.5", "HERALD_LEASE": "3s"}))
	if err != nil || c.Timeout != 2500*time.Millisecond || c.Lease != 3*time.Second {
		t.Fatalf("%+v %v", c, err)
	}
}
