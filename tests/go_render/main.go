// go_render renders an Ollama chat template the way Ollama does, for ccrl's tests.
//
// Go's text/template is the reference implementation of Ollama templates. This program mirrors
// the parts of Ollama that decide the rendered text, from Ollama's own source:
//
//   - api/types.go: the JSON shapes of api.Message, api.ToolCall and api.Tool as a chat request
//     decodes them. Since v0.14 (PR #13525, "preserve tool definition and call JSON ordering")
//     api.ToolCallFunctionArguments is an ordered map (internal/orderedmap over
//     wk8/go-ordered-map): the top level keeps the client's key order, nested objects decode into
//     map[string]any and numbers into float64.
//   - template/template.go, Template.Execute: collate (system messages collected into .System and
//     kept in .Messages; consecutive messages of one role merged with a blank line, except tool
//     results), the "missingkey=zero" option and the "json" function (json.Marshal). Since v0.14
//     (PR #13636, "template: fix args-as-json rendering") Execute does not hand templates the api
//     types: convertMessagesForTemplate turns each call's arguments into templateArgs, a plain
//     map[string]any (Arguments.ToMap()) whose String method is json.Marshal, and
//     convertToolsForTemplate does the same for tool properties. So {{ .Function.Arguments }}
//     prints Go's encoding/json of a map: compact, keys sorted at every level whatever order the
//     client sent, <, > and & escaped as \u003c \u003e \u0026 (also U+2028, U+2029), numbers as
//     float64. That is mode "render".
//   - v0.2.6 to v0.13.x (PR #5758, "marshal json automatically for some template values"): the
//     templates got api.Message itself, with `type ToolCallFunctionArguments map[string]any` and a
//     pointer-receiver String method (json.Marshal of the map: the same bytes). That is mode
//     "render-legacy"; the tool list is written as in "render" there.
//   - server/prompt.go (chatPrompt, renderPrompt) passes the request's messages to
//     Template.Execute unchanged apart from image tags.
//
// Ollama is built with Go >= 1.22, whose encoding/json writes \b and \f as short escapes (as
// Python's json does); Debian's older Go writes \u0008 and \u000c, so the tests keep those two
// characters out of what they render here.
//
// It also ports Ollama's lookup of the tool-call tag (the first text inside {{ if .ToolCalls }})
// and of the template's variables.
//
// Usage (JSON on stdin):
//
//	go_render render        {"template": "...", "messages": [...], "tools": [...]}  -> rendered text
//	go_render render-legacy {"template": "...", "messages": [...], "tools": [...]}  -> rendered text
//	go_render tag           {"template": "..."}                                     -> tool-call tag
//	go_render vars          {"template": "..."}                                     -> variables, one per line
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"
)

// orderedMap is a JSON object that keeps its keys in input order (Ollama's internal/orderedmap).
type orderedMap[V any] struct {
	keys   []string
	values map[string]V
}

func (m *orderedMap[V]) UnmarshalJSON(data []byte) error {
	m.keys = nil
	m.values = map[string]V{}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if delim, ok := tok.(json.Delim); !ok || delim != '{' {
		return fmt.Errorf("expected a JSON object, got %v", tok)
	}
	for dec.More() {
		keyTok, err := dec.Token()
		if err != nil {
			return err
		}
		key := keyTok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		var value V
		if err := json.Unmarshal(raw, &value); err != nil {
			return err
		}
		if _, seen := m.values[key]; !seen {
			m.keys = append(m.keys, key)
		}
		m.values[key] = value
	}
	_, err = dec.Token()
	return err
}

func (m *orderedMap[V]) MarshalJSON() ([]byte, error) {
	if m == nil {
		return []byte("null"), nil
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, key := range m.keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, err := json.Marshal(key)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(m.values[key])
		if err != nil {
			return nil, err
		}
		buf.Write(k)
		buf.WriteByte(':')
		buf.Write(v)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// ToMap is the plain Go map (what Ollama's ToMap returns; templates range over it in key order).
func (m *orderedMap[V]) ToMap() map[string]V {
	out := make(map[string]V, len(m.keys))
	for _, key := range m.keys {
		out[key] = m.values[key]
	}
	return out
}

type ImageData []byte

type Message struct {
	Role       string      `json:"role"`
	Content    string      `json:"content"`
	Thinking   string      `json:"thinking,omitempty"`
	Images     []ImageData `json:"images,omitempty"`
	ToolCalls  []ToolCall  `json:"tool_calls,omitempty"`
	ToolName   string      `json:"tool_name,omitempty"`
	ToolCallID string      `json:"tool_call_id,omitempty"`
}

func (m *Message) UnmarshalJSON(b []byte) error {
	type Alias Message
	var a Alias
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	*m = Message(a)
	m.Role = strings.ToLower(m.Role)
	return nil
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

type ToolCallFunction struct {
	Index     int                       `json:"index"`
	Name      string                    `json:"name"`
	Arguments ToolCallFunctionArguments `json:"arguments"`
}

type ToolCallFunctionArguments struct {
	om *orderedMap[any]
}

func (t *ToolCallFunctionArguments) UnmarshalJSON(data []byte) error {
	t.om = &orderedMap[any]{}
	return json.Unmarshal(data, t.om)
}

func (t ToolCallFunctionArguments) MarshalJSON() ([]byte, error) {
	if t.om == nil {
		return []byte("{}"), nil
	}
	return json.Marshal(t.om)
}

func (t *ToolCallFunctionArguments) String() string {
	if t == nil || t.om == nil {
		return "{}"
	}
	bts, _ := json.Marshal(t.om)
	return string(bts)
}

func (t *ToolCallFunctionArguments) ToMap() map[string]any {
	if t == nil || t.om == nil {
		return nil
	}
	return t.om.ToMap()
}

type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

type ToolPropertiesMap struct {
	om *orderedMap[ToolProperty]
}

func (t ToolPropertiesMap) MarshalJSON() ([]byte, error) {
	if t.om == nil {
		return []byte("null"), nil
	}
	return json.Marshal(t.om)
}

func (t *ToolPropertiesMap) UnmarshalJSON(data []byte) error {
	t.om = &orderedMap[ToolProperty]{}
	return json.Unmarshal(data, t.om)
}

type ToolProperty struct {
	AnyOf       []ToolProperty     `json:"anyOf,omitempty"`
	Type        PropertyType       `json:"type,omitempty"`
	Items       any                `json:"items,omitempty"`
	Description string             `json:"description,omitempty"`
	Enum        []any              `json:"enum,omitempty"`
	Properties  *ToolPropertiesMap `json:"properties,omitempty"`
}

type ToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties *ToolPropertiesMap `json:"properties"`
}

type ToolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description,omitempty"`
	Parameters  ToolFunctionParameters `json:"parameters"`
}

type Tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function ToolFunction `json:"function"`
}

func (t Tool) String() string {
	bts, _ := json.Marshal(t)
	return string(bts)
}

type Tools []Tool

func (t Tools) String() string {
	bts, _ := json.Marshal(t)
	return string(bts)
}

// The template-side types of template/template.go (v0.14+): what .Messages and .Tools hold.

type templateTools []templateTool

func (t templateTools) String() string {
	bts, _ := json.Marshal(t)
	return string(bts)
}

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	bts, _ := json.Marshal(t)
	return string(bts)
}

type templateProperties map[string]ToolProperty

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	bts, _ := json.Marshal(t)
	return string(bts)
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}

type templateToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []ImageData
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

func convertToolsForTemplate(tools Tools) templateTools {
	if tools == nil {
		return nil
	}
	result := make(templateTools, len(tools))
	for i, tool := range tools {
		var properties map[string]ToolProperty
		if tool.Function.Parameters.Properties != nil && tool.Function.Parameters.Properties.om != nil {
			properties = tool.Function.Parameters.Properties.om.ToMap()
		}
		result[i] = templateTool{
			Type:  tool.Type,
			Items: tool.Items,
			Function: templateToolFunction{
				Name:        tool.Function.Name,
				Description: tool.Function.Description,
				Parameters: templateToolFunctionParameters{
					Type:       tool.Function.Parameters.Type,
					Defs:       tool.Function.Parameters.Defs,
					Items:      tool.Function.Parameters.Items,
					Required:   tool.Function.Parameters.Required,
					Properties: templateProperties(properties),
				},
			},
		}
	}
	return result
}

func convertMessagesForTemplate(messages []*Message) []*templateMessage {
	if messages == nil {
		return nil
	}
	result := make([]*templateMessage, len(messages))
	for i, msg := range messages {
		var toolCalls []templateToolCall
		for _, tc := range msg.ToolCalls {
			toolCalls = append(toolCalls, templateToolCall{
				ID: tc.ID,
				Function: templateToolCallFunction{
					Index:     tc.Function.Index,
					Name:      tc.Function.Name,
					Arguments: templateArgs(tc.Function.Arguments.ToMap()),
				},
			})
		}
		result[i] = &templateMessage{
			Role:       msg.Role,
			Content:    msg.Content,
			Thinking:   msg.Thinking,
			Images:     msg.Images,
			ToolCalls:  toolCalls,
			ToolName:   msg.ToolName,
			ToolCallID: msg.ToolCallID,
		}
	}
	return result
}

// The api types of Ollama v0.2.6 to v0.13.x, which templates saw directly then.

type legacyMessage struct {
	Role       string           `json:"role"`
	Content    string           `json:"content"`
	Thinking   string           `json:"thinking,omitempty"`
	Images     []ImageData      `json:"images,omitempty"`
	ToolCalls  []legacyToolCall `json:"tool_calls,omitempty"`
	ToolName   string           `json:"tool_name,omitempty"`
	ToolCallID string           `json:"tool_call_id,omitempty"`
}

func (m *legacyMessage) UnmarshalJSON(b []byte) error {
	type Alias legacyMessage
	var a Alias
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	*m = legacyMessage(a)
	m.Role = strings.ToLower(m.Role)
	return nil
}

type legacyToolCall struct {
	ID       string                 `json:"id,omitempty"`
	Function legacyToolCallFunction `json:"function"`
}

type legacyToolCallFunction struct {
	Index     int        `json:"index,omitempty"`
	Name      string     `json:"name"`
	Arguments legacyArgs `json:"arguments"`
}

type legacyArgs map[string]any

func (t *legacyArgs) String() string {
	bts, _ := json.Marshal(t)
	return string(bts)
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

func parseTemplate(s string) (*template.Template, error) {
	return template.New("").Option("missingkey=zero").Funcs(funcs).Parse(s)
}

// collate is Ollama's: system messages are collected (and stay in the list); consecutive
// messages of the same role are merged with a blank line, except tool results.
func collate[M any](msgs []M, role func(*M) string, content func(*M) *string) (string, []*M) {
	var system []string
	var collated []*M
	for i := range msgs {
		if role(&msgs[i]) == "system" {
			system = append(system, *content(&msgs[i]))
		}
		if len(collated) > 0 && role(collated[len(collated)-1]) == role(&msgs[i]) && role(&msgs[i]) != "tool" {
			*content(collated[len(collated)-1]) += "\n\n" + *content(&msgs[i])
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

// identifiers is Ollama's template.Identifiers: every field and variable name in a node tree.
func identifiers(n parse.Node) []string {
	switch n := n.(type) {
	case *parse.ListNode:
		var names []string
		for _, c := range n.Nodes {
			names = append(names, identifiers(c)...)
		}
		return names
	case *parse.TemplateNode:
		return identifiers(n.Pipe)
	case *parse.ActionNode:
		return identifiers(n.Pipe)
	case *parse.BranchNode:
		names := identifiers(n.Pipe)
		for _, l := range []*parse.ListNode{n.List, n.ElseList} {
			if l != nil {
				names = append(names, identifiers(l)...)
			}
		}
		return names
	case *parse.IfNode:
		return identifiers(&n.BranchNode)
	case *parse.RangeNode:
		return identifiers(&n.BranchNode)
	case *parse.WithNode:
		return identifiers(&n.BranchNode)
	case *parse.PipeNode:
		var names []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				names = append(names, identifiers(a)...)
			}
		}
		return names
	case *parse.FieldNode:
		return n.Ident
	case *parse.VariableNode:
		return n.Ident
	}
	return nil
}

func vars(tmpl *template.Template) []string {
	set := map[string]struct{}{}
	for _, t := range tmpl.Templates() {
		if t.Tree == nil {
			continue
		}
		for _, n := range t.Root.Nodes {
			for _, name := range identifiers(n) {
				set[strings.ToLower(name)] = struct{}{}
			}
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// findToolCallNode and findTextNode are Ollama's tools.parseTag lookup.
func findToolCallNode(nodes []parse.Node) *parse.IfNode {
	isToolCallsNode := func(n *parse.IfNode) bool {
		for _, cmd := range n.Pipe.Cmds {
			for _, arg := range cmd.Args {
				if field, ok := arg.(*parse.FieldNode); ok {
					for _, ident := range field.Ident {
						if ident == "ToolCalls" {
							return true
						}
					}
				}
			}
		}
		return false
	}
	for _, node := range nodes {
		switch n := node.(type) {
		case *parse.IfNode:
			if isToolCallsNode(n) {
				return n
			}
			if r := findToolCallNode(n.List.Nodes); r != nil {
				return r
			}
			if n.ElseList != nil {
				if r := findToolCallNode(n.ElseList.Nodes); r != nil {
					return r
				}
			}
		case *parse.ListNode:
			if r := findToolCallNode(n.Nodes); r != nil {
				return r
			}
		case *parse.RangeNode:
			if r := findToolCallNode(n.List.Nodes); r != nil {
				return r
			}
			if n.ElseList != nil {
				if r := findToolCallNode(n.ElseList.Nodes); r != nil {
					return r
				}
			}
		case *parse.WithNode:
			if r := findToolCallNode(n.List.Nodes); r != nil {
				return r
			}
			if n.ElseList != nil {
				if r := findToolCallNode(n.ElseList.Nodes); r != nil {
					return r
				}
			}
		}
	}
	return nil
}

func findTextNode(nodes []parse.Node) *parse.TextNode {
	for _, node := range nodes {
		switch n := node.(type) {
		case *parse.TextNode:
			return n
		case *parse.IfNode:
			if t := findTextNode(n.List.Nodes); t != nil {
				return t
			}
			if n.ElseList != nil {
				if t := findTextNode(n.ElseList.Nodes); t != nil {
					return t
				}
			}
			return nil
		case *parse.ListNode:
			if t := findTextNode(n.Nodes); t != nil {
				return t
			}
		case *parse.RangeNode:
			if t := findTextNode(n.List.Nodes); t != nil {
				return t
			}
			if n.ElseList != nil {
				if t := findTextNode(n.ElseList.Nodes); t != nil {
					return t
				}
			}
			return nil
		case *parse.WithNode:
			if t := findTextNode(n.List.Nodes); t != nil {
				return t
			}
			if n.ElseList != nil {
				if t := findTextNode(n.ElseList.Nodes); t != nil {
					return t
				}
			}
			return nil
		case *parse.ActionNode:
			return nil
		}
	}
	return nil
}

func toolCallTag(tmpl *template.Template) string {
	tc := findToolCallNode(tmpl.Tree.Root.Nodes)
	if tc == nil {
		return ""
	}
	tn := findTextNode(tc.List.Nodes)
	if tn == nil {
		return ""
	}
	tag := strings.TrimSpace(string(tn.Text))
	tag = strings.ReplaceAll(tag, "\r\n", "\n")
	return strings.Split(tag, "{")[0]
}

type request struct {
	Template string          `json:"template"`
	Messages json.RawMessage `json:"messages"`
	Tools    Tools           `json:"tools"`
}

func values(system string, messages any, tools Tools) map[string]any {
	return map[string]any{
		"System":     system,
		"Messages":   messages,
		"Tools":      convertToolsForTemplate(tools),
		"Response":   "",
		"Think":      false,
		"ThinkLevel": "",
		"IsThinkSet": false,
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: go_render render|render-legacy|tag|vars < request.json")
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("read stdin: %v", err)
	}
	var req request
	if err := json.Unmarshal(input, &req); err != nil {
		fail("decode request: %v", err)
	}
	tmpl, err := parseTemplate(req.Template)
	if err != nil {
		fail("parse template: %v", err)
	}
	switch os.Args[1] {
	case "render", "render-legacy":
		var data map[string]any
		messages := req.Messages
		if len(messages) == 0 {
			messages = json.RawMessage("[]")
		}
		if os.Args[1] == "render" {
			var msgs []Message
			if err := json.Unmarshal(messages, &msgs); err != nil {
				fail("decode messages: %v", err)
			}
			system, collated := collate(msgs, func(m *Message) string { return m.Role },
				func(m *Message) *string { return &m.Content })
			data = values(system, convertMessagesForTemplate(collated), req.Tools)
		} else {
			var msgs []legacyMessage
			if err := json.Unmarshal(messages, &msgs); err != nil {
				fail("decode messages: %v", err)
			}
			system, collated := collate(msgs, func(m *legacyMessage) string { return m.Role },
				func(m *legacyMessage) *string { return &m.Content })
			data = values(system, collated, req.Tools)
		}
		var out bytes.Buffer
		if err := tmpl.Execute(&out, data); err != nil {
			fail("execute template: %v", err)
		}
		os.Stdout.Write(out.Bytes())
	case "tag":
		fmt.Print(toolCallTag(tmpl))
	case "vars":
		fmt.Print(strings.Join(vars(tmpl), "\n"))
	default:
		fail("unknown mode %q", os.Args[1])
	}
}
