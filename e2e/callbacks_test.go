package e2e

import (
	"strings"
	"testing"
	"time"
)

func TestCallbacksBadConfigurationExits2(t *testing.T) {
	base := []string{"EVENTS_QUEUE_KAFKA_BOOTSTRAP_SERVER=127.0.0.1:1", "EVENT_PROCESSOR_CALLBACK_API_REQUEST_ENABLED=true",
		"CALLBACK_API_BASE_URL=http://127.0.0.1:1"}
	for _, tc := range []struct {
		env []string
		key string
	}{
		{nil, "EVENTS_QUEUE_KAFKA_BOOTSTRAP_SERVER"},
		{append(base, "CALLBACK_API_AUTH_TYPE=jwt", "SECRET_CALLBACK_API_AUTH_SECRET=too-short"), "SECRET_CALLBACK_API_AUTH_SECRET"},
		{append(base, "CALLBACK_API_AUTH_TYPE=jwt", "SECRET_CALLBACK_API_AUTH_SECRET=0123456789abcdef0123456789abcdef",
			"CALLBACK_API_AUTH_JWT_EXPIRATION_MILLISECONDS=1000"), "CALLBACK_API_AUTH_JWT_EXPIRATION_MILLISECONDS"},
	} {
		p := start(t, tc.env, "callbacks")
		code := p.wait(5 * time.Second)
		out := strings.TrimSpace(p.log.String())
		if code != 2 || strings.Count(out, "\n") != 0 || !strings.Contains(out, tc.key) {
			t.Errorf("env %v: exit %d, output %q; want exit 2 and one line naming %s", tc.env, code, out, tc.key)
		}
	}
}
