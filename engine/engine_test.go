package engine

import (
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNoBrokerImports keeps the engine free of broker and HTTP packages: adapters depend on the
// engine, never the reverse.
func TestNoBrokerImports(t *testing.T) {
	files, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !strings.HasSuffix(f.Name(), ".go") || strings.HasSuffix(f.Name(), "_test.go") {
			continue
		}
		ast, err := parser.ParseFile(token.NewFileSet(), f.Name(), nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range ast.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.Contains(path, ".") || strings.HasPrefix(path, "net") {
				t.Errorf("%s imports %s: the engine may use only the standard library, and no network package", f.Name(), path)
			}
		}
	}
}

func TestReferenceRetrySchedule(t *testing.T) {
	want := []float64{5, 7.476743906106103, 11.180339887498949, 16.71850762441055, 25}
	for i, w := range want {
		if got := ReferenceRetryPolicy.Delay(i + 1).Seconds(); got < w-1e-6 || got > w+1e-6 {
			t.Errorf("retry %d: %v s, want %v s", i+1, got, w)
		}
	}
	if nextBackoff(0) != 100*time.Millisecond || nextBackoff(4*time.Second) != 5*time.Second {
		t.Error("backoff must start at 100 ms and stop at 5 s")
	}
}

func TestMessageReuse(t *testing.T) {
	m := GetMessage()
	m.SetRaw([]byte("abc"))
	m.Headers = append(m.Headers, Header{Name: []byte("a"), Value: []byte("b")})
	m.Retries = 3
	PutMessage(m)
	m = GetMessage()
	if len(m.Raw) != 0 || len(m.Headers) != 0 || m.Retries != 0 || m.URL != nil {
		t.Fatalf("a pooled message came back dirty: %+v", m)
	}
}
