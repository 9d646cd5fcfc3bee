package config

import (
	"os"
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
		{map[string]string{"REDIS_SERVER_URL": "redis://h", "HERALD_ENDPOINTS": `[{"url": "https://a/", "secret": "whsec_short"}]`}, "HERALD_ENDPOINTS"},
		{map[string]string{"REDIS_SERVER_URL": "redis://h", "HERALD_ENDPOINTS": "[\n{\"url\": \"https://a/\",\n \"rate\": \"fast\"}]"}, "HERALD_ENDPOINTS"},
		{map[string]string{"REDIS_SERVER_URL": "redis://h", "HERALD_ENDPOINTS": "/no/such/rules.json"}, "HERALD_ENDPOINTS"},
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

func TestLoadCallbacksFromTheAnchorPlatformsYAML(t *testing.T) {
	path := t.TempDir() + "/anchor-config.yaml"
	yaml := `
events:
  queue:
    kafka:
      bootstrap_server: kafka:29092
event_processor:
  client_status_callback:
    enabled: true
  callback_api_request:
    enabled: true
callback_api:
  base_url: http://business:8081/
  auth:
    type: jwt
    jwt:
      expiration_milliseconds: 30000
      http_header: X-Auth
clients:
  - name: referenceCustodial
    domain: wallet.example.com
    callback_urls:
      sep24: https://wallet.example.com/sep24
      sep12: ""
  - name: legacy
    callback_url: http://legacy:9000/cb
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"STELLAR_ANCHOR_CONFIG": "file:" + path, "SECRET_CALLBACK_API_AUTH_SECRET": strings.Repeat("s", 32),
		"SECRET_SEP10_SIGNING_SEED": "SDHOAMBNLGCE2MV5ZKIVZAQD3VCLGP53P3OBSBI6UN5L5XZI5TKHFQL4", "CALLBACK_API_AUTH_JWT_EXPIRATION_MILLISECONDS": "60000"}
	c, err := LoadCallbacks(MapEnv(env))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Seeds) != 1 || c.Seeds[0] != "kafka:29092" || !c.ClientCallbacks || !c.BusinessServer || c.BaseURL != "http://business:8081" ||
		c.AuthType != "jwt" || c.JWTHeader != "X-Auth" || c.JWTExpiration != time.Minute || c.Topic != "TRANSACTION" || len(c.Clients) != 2 ||
		c.Clients[0].URLs["sep24"] != "https://wallet.example.com/sep24" || c.Clients[1].URLs["sep6"] != "http://legacy:9000/cb" {
		t.Fatalf("loaded %+v", c)
	}
	for key, change := range map[string]map[string]string{
		"SECRET_CALLBACK_API_AUTH_SECRET":               {"SECRET_CALLBACK_API_AUTH_SECRET": "short"},
		"CALLBACK_API_AUTH_JWT_EXPIRATION_MILLISECONDS": {"CALLBACK_API_AUTH_JWT_EXPIRATION_MILLISECONDS": "4999"},
		"SECRET_SEP10_SIGNING_SEED":                     {"SECRET_SEP10_SIGNING_SEED": ""},
		"CALLBACK_API_AUTH_TYPE":                        {"CALLBACK_API_AUTH_TYPE": "oauth"},
		"CALLBACK_API_BASE_URL":                         {"CALLBACK_API_BASE_URL": "business:8081"},
		"EVENTS_QUEUE_KAFKA_BOOTSTRAP_SERVER":           {"EVENTS_QUEUE_KAFKA_BOOTSTRAP_SERVER": "kafka"},
		"STELLAR_ANCHOR_CONFIG":                         {"STELLAR_ANCHOR_CONFIG": path + ".missing"},
	} {
		e := map[string]string{}
		for k, v := range env {
			e[k] = v
		}
		for k, v := range change {
			e[k] = v
		}
		_, err := LoadCallbacks(MapEnv(e))
		if err == nil || !strings.HasPrefix(err.Error(), key+": ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error %v, want one line starting with %s", change, err, key)
		}
	}
}
