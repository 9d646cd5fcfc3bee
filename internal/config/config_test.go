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

func TestLoadWaypoint(t *testing.T) {
	c, err := LoadWaypoint(MapEnv(map[string]string{"ACAPY_MULTITENANT_JWT_SECRET": "s", "SSE_TIMEOUT": "30"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Timeout != 30*time.Second || c.LookBack != time.Minute || c.Ping != 15*time.Second ||
		c.Stream != "cloudapi_aries_state_monitoring" || c.Subject != "cloudapi.aries.state_monitoring" ||
		c.Listen != "127.0.0.1:3011" || c.Source.Kind != "" || len(c.GovernanceKey) != 0 {
		t.Fatalf("defaults: %+v", c)
	}
	c, err = LoadWaypoint(MapEnv(map[string]string{"ACAPY_GOVERNANCE_AGENT_API_KEY": "k", "HERALD_SOURCE": "redis://h:6379?list=waypoint"}))
	if err != nil || c.Source.Kind != KindRedis {
		t.Fatalf("redis source: %+v %v", c.Source, err)
	}
	for _, tc := range []struct {
		env map[string]string
		key string
	}{
		{map[string]string{}, "ACAPY_MULTITENANT_JWT_SECRET"},
		{map[string]string{"ACAPY_MULTITENANT_JWT_SECRET": "s", "SSE_TIMEOUT": "never"}, "SSE_TIMEOUT"},
		{map[string]string{"ACAPY_MULTITENANT_JWT_SECRET": "s", "SSE_LOOK_BACK": "-1"}, "SSE_LOOK_BACK"},
		{map[string]string{"ACAPY_MULTITENANT_JWT_SECRET": "s", "HERALD_LISTEN": "3011"}, "HERALD_LISTEN"},
		{map[string]string{"ACAPY_MULTITENANT_JWT_SECRET": "s", "NATS_STATE_SUBJECT": "a.*"}, "NATS_STATE_SUBJECT"},
		{map[string]string{"ACAPY_MULTITENANT_JWT_SECRET": "s", "NATS_STATE_STREAM": "a.b"}, "NATS_STATE_STREAM"},
		{map[string]string{"ACAPY_MULTITENANT_JWT_SECRET": "s", "NATS_CREDS_FILE": "/nonexistent.creds"}, "NATS_CREDS_FILE"},
		{map[string]string{"ACAPY_MULTITENANT_JWT_SECRET": "s", "HERALD_SOURCE": "kafka://h:9092?topic=t"}, "HERALD_SOURCE"},
		{map[string]string{"ACAPY_MULTITENANT_JWT_SECRET": "s", "HERALD_SOURCE": "redis://h:6379"}, "HERALD_SOURCE"},
	} {
		_, err := LoadWaypoint(MapEnv(tc.env))
		if err == nil || !strings.HasPrefix(err.Error(), tc.key+": ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error %v, want one line starting with %s", tc.env, err, tc.key)
		}
	}
}
