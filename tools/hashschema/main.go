// Command hashschema supports kubus's pure-Python pod-template-hash
// (reconcilers/controllers/podtemplatehash.py). It has two modes:
//
//	hashschema schema  > reconcilers/controllers/podtemplate_schema.json
//	    Walks core/v1.PodTemplateSpec with reflect and writes the Go type
//	    schema the Python printer needs: every type reachable from the root,
//	    keyed by the string reflect (and therefore go-spew) prints for it, with
//	    struct fields in declaration order, their JSON names and field types.
//
//	TZ= hashschema vectors CASES.json > tests/unit/data/pod_template_hash_vectors.json
//	    Reads [{"name": ..., "template": {...}}, ...], pushes every template
//	    through the path kube-controller-manager's informers see (JSON decode
//	    -> protobuf Marshal -> protobuf Unmarshal into a fresh struct) and
//	    prints the spew dump and the pod-template-hash for several collision
//	    counts. TZ must be set and empty so that time.Local is Go's UTC
//	    fallback zone (see the Python module for why).
//
// Run from this directory: GOTOOLCHAIN=local GOFLAGS=-mod=mod go run . schema
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/dump"
	sigsjson "sigs.k8s.io/json"
)

// Types whose JSON form is custom (they implement json.Unmarshaler); the
// Python side has a dedicated handler for each. Any other custom type makes
// the generator fail so that a new one cannot slip in unnoticed.
var specials = map[reflect.Type]string{
	reflect.TypeOf(resource.Quantity{}):                   "quantity",
	reflect.TypeOf(intstr.IntOrString{}):                  "intorstring",
	reflect.TypeOf(metav1.Time{}):                         "time",
	reflect.TypeOf(metav1.MicroTime{}):                    "microtime",
	reflect.TypeOf(metav1.FieldsV1{}):                     "fieldsv1",
	reflect.TypeOf(time.Time{}):                           "gotime",
	reflect.TypeOf(resource.Format("")):                   "",
	reflect.TypeOf(intstr.Type(0)):                        "",
	reflect.TypeOf(metav1.ManagedFieldsOperationType("")): "",
}

type field struct {
	Name   string `json:"name"`
	JSON   string `json:"json,omitempty"`
	Inline bool   `json:"inline,omitempty"`
	Type   string `json:"type"`
}

type typeInfo struct {
	Kind    string  `json:"kind"`
	Pkg     string  `json:"pkg,omitempty"`
	Special string  `json:"special,omitempty"`
	Elem    string  `json:"elem,omitempty"`
	Key     string  `json:"key,omitempty"`
	Fields  []field `json:"fields,omitempty"`
}

type walker struct {
	types map[string]typeInfo
	seen  map[string]reflect.Type
}

var unmarshaler = reflect.TypeOf((*json.Unmarshaler)(nil)).Elem()

func (w *walker) walk(t reflect.Type, inSpecial bool) string {
	name := t.String()
	if prev, ok := w.seen[name]; ok {
		if prev != t {
			panic(fmt.Sprintf("two types print as %q: %s and %s", name, prev.PkgPath(), t.PkgPath()))
		}
		return name
	}
	w.seen[name] = t
	info := typeInfo{Pkg: t.PkgPath()}
	special, known := specials[t]
	if !known && !inSpecial && reflect.PointerTo(t).Implements(unmarshaler) {
		panic(fmt.Sprintf("%s has custom JSON decoding and no Python handler", name))
	}
	info.Special = special
	// The innards of a special type are printed, never decoded from JSON.
	inner := inSpecial || special != ""
	switch t.Kind() {
	case reflect.Struct:
		info.Kind = "struct"
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			fi := field{Name: f.Name, Type: w.walk(f.Type, inner)}
			if f.IsExported() {
				tag := f.Tag.Get("json")
				jsonName, opts, _ := strings.Cut(tag, ",")
				switch {
				case tag == "-":
				case jsonName == "" && (f.Anonymous || strings.Contains(","+opts+",", ",inline,")):
					fi.Inline = true
				case jsonName == "":
					fi.JSON = f.Name
				default:
					fi.JSON = jsonName
				}
			}
			info.Fields = append(info.Fields, fi)
		}
	case reflect.Pointer:
		info.Kind = "ptr"
		info.Elem = w.walk(t.Elem(), inner)
	case reflect.Slice:
		info.Kind = "slice"
		info.Elem = w.walk(t.Elem(), inner)
	case reflect.Map:
		info.Kind = "map"
		info.Key = w.walk(t.Key(), inner)
		info.Elem = w.walk(t.Elem(), inner)
	case reflect.String:
		info.Kind = "string"
	case reflect.Bool:
		info.Kind = "bool"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		info.Kind = "int"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		info.Kind = "uint"
	default:
		panic(fmt.Sprintf("%s: kind %s not supported", name, t.Kind()))
	}
	w.types[name] = info
	return name
}

func writeSchema() {
	w := &walker{types: map[string]typeInfo{}, seen: map[string]reflect.Type{}}
	root := w.walk(reflect.TypeOf(v1.PodTemplateSpec{}), false)
	names := make([]string, 0, len(w.types))
	for n := range w.types {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("{\n")
	b.WriteString(`"_comment": "Generated by tools/hashschema (go run . schema) from k8s.io/api ` + modVersion("k8s.io/api") +
		`, k8s.io/apimachinery ` + modVersion("k8s.io/apimachinery") + `, ` + runtimeVersion() +
		`; do not edit. Go type schema of everything reachable from v1.PodTemplateSpec, keyed by go-spew's type string.",` + "\n")
	b.WriteString(`"root": ` + quote(root) + ",\n")
	b.WriteString(`"types": {` + "\n")
	for i, n := range names {
		enc, err := json.Marshal(w.types[n])
		if err != nil {
			panic(err)
		}
		b.WriteString(quote(n) + ": " + string(enc))
		if i < len(names)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("}\n}\n")
	os.Stdout.WriteString(b.String())
}

func quote(s string) string {
	enc, _ := json.Marshal(s)
	return string(enc)
}

func computeHash(template *v1.PodTemplateSpec, collisionCount *int32) (string, uint32) {
	h := fnv.New32a()
	fmt.Fprintf(h, "%v", dump.ForHash(*template))
	if collisionCount != nil {
		b := make([]byte, 8)
		binary.LittleEndian.PutUint32(b, uint32(*collisionCount))
		h.Write(b)
	}
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32())), h.Sum32()
}

type inputCase struct {
	Name     string          `json:"name"`
	Template json.RawMessage `json:"template"`
}

type outputCase struct {
	Name     string          `json:"name"`
	Template json.RawMessage `json:"template"`
	// What the apiserver would return for it: the JSON encoding of the decoded object.
	Apiserver json.RawMessage   `json:"apiserver_template"`
	Dump      string            `json:"dump"`
	Hashes    map[string]string `json:"hashes"`
}

func writeVectors(path string) {
	if tz, ok := os.LookupEnv("TZ"); !ok || tz != "" {
		panic("run with TZ= (set and empty) so that time.Local is the UTC fallback zone")
	}
	// time.Local is loaded lazily, on first use; until then spew prints its zero value
	// (name ""). kube-controller-manager has used it long before it hashes (klog's headers).
	if time.Local.String() != "UTC" {
		panic("time.Local is not Go's UTC fallback zone")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	var cases []inputCase
	if err := json.Unmarshal(data, &cases); err != nil {
		panic(err)
	}
	out := make([]outputCase, 0, len(cases))
	for _, c := range cases {
		var decoded v1.PodTemplateSpec
		// The apiserver decodes requests case-sensitively.
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(c.Template, &decoded); err != nil {
			panic(fmt.Sprintf("%s: %v", c.Name, err))
		}
		wire, err := decoded.Marshal()
		if err != nil {
			panic(fmt.Sprintf("%s: %v", c.Name, err))
		}
		var informer v1.PodTemplateSpec
		if err := informer.Unmarshal(wire); err != nil {
			panic(fmt.Sprintf("%s: %v", c.Name, err))
		}
		served, err := json.Marshal(&informer)
		if err != nil {
			panic(fmt.Sprintf("%s: %v", c.Name, err))
		}
		oc := outputCase{Name: c.Name, Template: c.Template, Apiserver: served, Dump: dump.ForHash(informer), Hashes: map[string]string{}}
		oc.Hashes["nil"], _ = computeHash(&informer, nil)
		for _, cc := range []int32{0, 1, 5, -1} {
			oc.Hashes[fmt.Sprint(cc)], _ = computeHash(&informer, &cc)
		}
		out = append(out, oc)
	}
	// One case per line: diffs of regenerated vectors stay readable.
	var b strings.Builder
	b.WriteString("[\n")
	for i, oc := range out {
		var line strings.Builder
		enc := json.NewEncoder(&line)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(oc); err != nil {
			panic(err)
		}
		b.WriteString(strings.TrimSuffix(line.String(), "\n"))
		if i < len(out)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("]\n")
	os.Stdout.WriteString(b.String())
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hashschema schema | hashschema vectors CASES.json")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "schema":
		writeSchema()
	case "vectors":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: hashschema vectors CASES.json")
			os.Exit(2)
		}
		writeVectors(os.Args[2])
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}
