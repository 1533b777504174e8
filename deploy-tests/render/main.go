// A minimal Helm-compatible renderer, used only by deploy-tests/tests/chart.rs where helm is
// not installed: text/template + sprig + Helm's include, tpl, toYaml, fromYaml, required and
// .Files.Get, .Release, .Chart, .Values (values.yaml deep-merged with override files).
//
// Usage: render CHART_DIR RELEASE_NAME [VALUES_FILE...]
// Output (stdout): JSON {"documents":[{"source":..., "text":..., "object":...}], "notes": ...};
// every rendered YAML document is parsed here (yaml.v3), so a parse error fails the run.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type files struct{ dir string }

func (f files) Get(name string) string {
	b, err := os.ReadFile(filepath.Join(f.dir, name))
	if err != nil {
		return ""
	}
	return string(b)
}

type chartMeta struct {
	Name, Version, AppVersion, Description, Type, APIVersion string
}

func readYAML(path string) map[string]interface{} {
	b, err := os.ReadFile(path)
	if err != nil {
		fail("read %s: %v", path, err)
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		fail("parse %s: %v", path, err)
	}
	return m
}

func merge(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "render: "+format+"\n", args...)
	os.Exit(1)
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: render CHART_DIR RELEASE [VALUES...]")
	}
	dir, release := os.Args[1], os.Args[2]
	values := readYAML(filepath.Join(dir, "values.yaml"))
	for _, f := range os.Args[3:] {
		values = merge(values, readYAML(f))
	}
	cm := readYAML(filepath.Join(dir, "Chart.yaml"))
	str := func(k string) string { s, _ := cm[k].(string); return s }
	top := map[string]interface{}{
		"Values":  values,
		"Release": map[string]interface{}{"Name": release, "Namespace": "default", "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
		"Chart":   chartMeta{Name: str("name"), Version: str("version"), AppVersion: str("appVersion"), Description: str("description"), Type: str("type"), APIVersion: str("apiVersion")},
		"Files":   files{dir},
	}

	root := template.New("chart")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		_ = yaml.Unmarshal([]byte(s), &m)
		return m
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, fmt.Errorf("%s", msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	root.Funcs(funcs).Option("missingkey=zero")

	tdir := filepath.Join(dir, "templates")
	entries, err := os.ReadDir(tdir)
	if err != nil {
		fail("%v", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(tdir, e.Name()))
		if err != nil {
			fail("%v", err)
		}
		if _, err := root.New(e.Name()).Parse(string(b)); err != nil {
			fail("parse template %s: %v", e.Name(), err)
		}
		names = append(names, e.Name())
	}
	sort.Strings(names)

	type doc struct {
		Source string      `json:"source"`
		Text   string      `json:"text"`
		Object interface{} `json:"object"`
	}
	out := struct {
		Documents []doc  `json:"documents"`
		Notes     string `json:"notes"`
	}{Documents: []doc{}}
	for _, name := range names {
		if strings.HasPrefix(name, "_") {
			continue
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, top); err != nil {
			fail("render %s: %v", name, err)
		}
		if name == "NOTES.txt" {
			out.Notes = buf.String()
			continue
		}
		for i, part := range strings.Split(buf.String(), "\n---") {
			if strings.TrimSpace(part) == "" {
				continue
			}
			var obj interface{}
			if err := yaml.Unmarshal([]byte(part), &obj); err != nil {
				fail("%s document %d is not YAML: %v\n%s", name, i, err, part)
			}
			if obj == nil {
				continue // only comments
			}
			out.Documents = append(out.Documents, doc{Source: name, Text: part, Object: obj})
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		fail("json: %v", err)
	}
}
