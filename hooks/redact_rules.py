"""The redaction rule table (data only, standard library only): what ``redact.py`` looks for.

Each rule is ``(kind, pattern, markers, replacement)``. ``markers`` are lower-case literals of
which at least one occurs in anything the pattern can match (the hook's cheap pre-check; see
redact.py). ``replacement`` is a ``re.sub`` template, or None when redact.py's callback for the
kind decides (code or secret, random token or word).

Formats follow gitleaks' default rule set (config/gitleaks.toml) and detect-secrets' plugins;
tests/redact_cases.py holds a realistic case for each family.

Every pattern must run in linear time on any input, so that no payload can stall the hook:
- an unbounded run starts only where the run itself starts (a look-behind excludes the run's own
  characters), so a failed attempt is never repeated from inside the same run;
- a value ends at the first character that may also start the next attempt (a quote, ``://``),
  or is bounded;
- look-behinds and look-aheads are fixed and short.
benchmarks/redact_rules.py times every rule on adversarial inputs; tests/test_redact_battery.py
checks that they finish with the right output.
"""

# ---------------------------------------------------------------------------------------------
# Building blocks. Patterns run on raw text and on JSON text (the hook's payload), where a
# newline is the two characters \n, a quote is \" (or \\\" one level deeper) and so on.

# Left edge of a token: no token character before it; a JSON escape (\n, \t, \r) counts as an
# edge, so a token at the start of a line inside a JSON string is still found.
_L = r"(?:(?<![A-Za-z0-9_])|(?<=\\[nrt]))"
# The same for tokens whose alphabet includes "-" (a run is entered only at its start).
_LD = r"(?:(?<![A-Za-z0-9_\-])|(?<=\\[nrt]))"
# Right edge: no further token character.
_R = r"(?![A-Za-z0-9_])"
# A quote as it appears in raw text ("), in a JSON string (\"), or in JSON nested in JSON (\\\").
_Q = r"""(?:\\{0,7}["'])"""
# Separator of an assignment: KEY=value, key: value, key => value, key := value (not ==).
_SEP = r"[ \t]*(?:=>|:=|[:=])(?!=)[ \t]*"
# Start of a line: start of the text, after a newline, after a JSON \n or \r escape, or at the
# start of a (JSON) string.
_LINE_START = r"""(?:^|(?<=[\r\n])|(?<=\\[nr])|(?<=["']))"""
# End of a line (look-ahead): newline, JSON escape, end of the string, end of the text.
_LINE_END = r"""(?=[ \t]*(?:[\r\n]|\\{1,7}[nr]|\\*"[ \t]*(?:[,}\]:\r\n]|$)|$))"""

# A quoted value of any length, in raw text or at any JSON nesting level up to 3: the closing
# quote has exactly the backslashes of the opening one, so escaped quotes inside are part of the
# value. Each step consumes a character or a whole run of backslashes (no backtracking inside a
# run); a value never spans a line.
_DQ_VALUE = (r"""(?P<q>\\{0,7})(?P<dq>")(?P<dv>(?:[^"\\\r\n]|\\+[^"\\\r\nnrt]|(?!(?P=q)")\\+")*+)"""
             r"""(?P=q)(?P<dq2>")""")
_SQ_VALUE = r"""(?P<sq>')(?P<sv>(?:[^'\\\r\n]|\\+[^\\\r\nnrt])*+)(?P<sq2>')"""
# An unquoted value: one token (a shell word, a YAML scalar up to the next space). A word
# followed by its own separator is the next name, not a value ("key: SECRET_KEY = 'x'"): the
# match is dropped so the next name's value is found. Brackets belong to the JSON or YAML flow
# structure around it: a value never starts with one and ends before a closing one
# ({"pin": 1234}, {"pin": [1234]}).
_BARE_VALUE = r"""(?P<bv>[^\s"'\\,;`=}\]{\[][^\s"'\\,;`}\]]{2,}+)(?![ \t]+(?:=>|:=|[:=]))"""

# Names that mark the value assigned to them as a secret. The pattern matches only the name's
# tail (the callback recovers the whole name: anchoring on a literal keeps the scan fast). The
# ``[_-]key`` and ``[_-]auth`` families are weak (primary_key, user_auth): the
# callback decides on those.
_SECRET_NAME_TAIL = (
    r"(?:password|passwd|passphrase|passcode|secret|token|credentials?|creds|apikey|accesskey|"
    r"privatekey|secretkey|[_\-]key(?:_base)?|[_\-]pwd|[_\-]pass|[_\-]auth)"
)
_SECRET_NAME_MARKERS = (
    "password", "passwd", "passphrase", "passcode", "secret", "token", "credential", "creds",
    "apikey", "accesskey", "privatekey", "secretkey", "_key", "-key", "_pwd", "-pwd", "_pass",
    "-pass", "_auth", "-auth",
)

# A value on a command line: quoted (raw or JSON-escaped) or one shell word.
_CLI_VALUE = r"""(?:'[^'\r\n]*'|\\{0,7}"[^"\\\r\n]*\\{0,7}"|[^\s"'\\;|&<>`]+)"""

# PEM body: anything up to the END line, across JSON escapes and (in source code) across
# string literals joined by +, newlines or nothing ("...\n" "..." / "..." + "..."), never into
# another BEGIN line.
_PEM_BODY = r"""(?:[^"\\\-]|\\.|-(?!----BEGIN)|"[\s+]*")"""
_PEM_BEGIN = r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"


def _token(kind: str, pattern: str, *markers: str, edge: str = _L) -> tuple:
    """A rule for a token with a fixed, documented prefix: the whole token goes."""
    return (kind, edge + pattern, markers, f"[REDACTED:{kind}]")


# (kind, pattern, markers, replacement). Order matters: whole key blocks and specific token
# formats first, then URLs and config formats, then generic assignments, so a token inside an
# assignment keeps its specific kind.
RULES: list[tuple[str, str, tuple[str, ...], str | None]] = [
    # A whole PEM block; if the END line is missing (a truncated read), everything up to the
    # end of the enclosing string (or of the text) goes.
    ("private_key", _PEM_BEGIN + r"(?:" + _PEM_BODY + r"*?" + _PEM_END + r"|" + _PEM_BODY + r"*)",
     ("private key",), "[REDACTED:private_key]"),
    # PuTTY .ppk: the private lines after their header.
    ("private_key", r"Private-Lines:[ \t]*\d+(?:(?:\r?\n|(?:\\{1,7}r)?\\{1,7}n)[A-Za-z0-9+/=]{4,})+",
     ("private-lines:",), "Private-Lines: [REDACTED:private_key]"),
    # A base64-encoded PEM key (kubeconfig client-key-data, Kubernetes secrets): the callback
    # decodes the start and redacts only private keys (certificates are public).
    ("private_key", _L + r"(?P<v>LS0tLS1CRUdJTi[A-Za-z0-9+/]{20,}={0,2})", ("ls0tls1crudjti",), None),
    _token("age_secret_key", r"AGE-SECRET-KEY-1[0-9A-Z]{58}", "age-secret-key-1"),
    # AI providers.
    _token("anthropic_key", r"sk-ant-[A-Za-z0-9_\-]{16,}", "sk-ant-", edge=_LD),
    # sk-... is also how ordinary names start (sk-video-processing-library): the callback keeps
    # values that are not random-looking.
    ("openai_key", _LD + r"(?P<v>sk-(?:proj-|svcacct-|admin-|or-v1-)?[A-Za-z0-9_\-]{20,})", ("sk-",), None),
    ("huggingface_token", _L + r"(?P<v>(?:hf_|api_org_)[A-Za-z0-9]{30,})" + _R, ("hf_", "api_org_"), None),
    _token("groq_key", r"gsk_[A-Za-z0-9]{48,}" + _R, "gsk_"),
    _token("xai_key", r"xai-[A-Za-z0-9]{60,}" + _R, "xai-"),
    _token("perplexity_key", r"pplx-[A-Za-z0-9]{40,}" + _R, "pplx-"),
    _token("replicate_token", r"r8_[A-Za-z0-9]{37}" + _R, "r8_"),
    # Code hosts.
    _token("github_token", r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})",
           "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    _token("gitlab_token",
           r"(?:gl(?:pat|dt|ft|imt|ptt|rt|soat|cbt|oas|agent|ffct|wt)-[0-9A-Za-z_\-]{20,}(?:\.[0-9a-z]{2,})?"
           r"|GR1348941[0-9A-Za-z_\-]{20,})",
           "glpat-", "gldt-", "glft-", "glimt-", "glptt-", "glrt-", "glsoat-", "glcbt-", "gloas-",
           "glagent-", "glffct-", "glwt-", "gr1348941"),
    _token("bitbucket_token", r"ATBB[A-Za-z0-9_=.\-]{28,}" + _R, "atbb"),
    _token("atlassian_token", r"ATATT3[A-Za-z0-9_=\-]{100,}", "atatt3"),
    # Package registries.
    _token("npm_token", r"npm_[A-Za-z0-9]{36}" + _R, "npm_"),
    _token("pypi_token", r"pypi-AgE[A-Za-z0-9_\-]{50,}", "pypi-age"),
    _token("rubygems_token", r"rubygems_[a-f0-9]{48}" + _R, "rubygems_"),
    _token("clojars_token", r"CLOJARS_[A-Za-z0-9]{60}" + _R, "clojars_"),
    _token("artifactory_token", r"(?:AKCp[A-Za-z0-9]{69}|cmVmdGtu[A-Za-z0-9]{56})" + _R, "akcp", "cmvmdgtu"),
    # Cloud providers.
    _token("aws_access_key", r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}" + _R,
           "akia", "asia", "abia", "acca", "a3t"),
    ("aws_secret_key",
     r"(?i)(aws_?secret_?(?:access_?)?key" + _Q + r"?(?:" + _SEP + r"|[ \t]+)" + _Q + r"?)[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
     ("awssecret", "aws_secret"), r"\1[REDACTED:aws_secret_key]"),
    _token("aws_session_token", r"(?:IQoJb3JpZ2luX2Vj|FwoGZXIvYXdz|FQoGZXIvYXdz)[A-Za-z0-9/+=]{100,}",
           "iqojb3jpz2lux2vj", "fwogzxivyxdz", "fqogzxivyxdz"),
    _token("aws_bedrock_key", r"ABSK[A-Za-z0-9+/]{100,}={0,2}", "absk"),
    _token("google_api_key", r"AIza[0-9A-Za-z_\-]{35}", "aiza"),
    _token("google_oauth_token", r"(?:ya29\.[0-9A-Za-z_\-]{20,}|GOCSPX-[0-9A-Za-z_\-]{20,}|1//0[0-9A-Za-z_\-]{30,})",
           "ya29.", "gocspx-", "1//0"),
    ("azure_storage_key", r"(?i)((?:account|sharedaccess)key[ \t]*=[ \t]*)[A-Za-z0-9+/]{20,}={0,2}",
     ("accountkey", "sharedaccesskey"), r"\1[REDACTED:azure_storage_key]"),
    # Signed URLs: Azure SAS sig=, S3/GCS presigned signatures and session tokens.
    ("url_signature",
     r"(?i)((?<![A-Za-z0-9_\-])(?:sig|signature|x-amz-signature|x-goog-signature|x-amz-security-token)=)"
     r"[A-Za-z0-9%+/=_.\-]{16,}",
     ("sig=", "signature=", "security-token="), r"\1[REDACTED:url_signature]"),
    _token("azure_ad_client_secret", r"[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}(?![A-Za-z0-9_~.\-])",
           "q~", edge=r"(?:(?<![A-Za-z0-9_~.\-])|(?<=\\[nrt]))"),
    _token("alibaba_access_key", r"LTAI[A-Za-z0-9]{20}" + _R, "ltai"),
    _token("digitalocean_token", r"do[opr]_v1_[a-f0-9]{64}" + _R, "dop_v1_", "doo_v1_", "dor_v1_"),
    _token("databricks_token", r"dapi[a-f0-9]{32}(?:-\d)?" + _R, "dapi"),
    _token("doppler_token", r"dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,}",
           "dp.pt.", "dp.st.", "dp.sa.", "dp.ct.", "dp.scim.", "dp.audit."),
    _token("dynatrace_token", r"dt0c01\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{64}", "dt0c01."),
    _token("flyio_token", r"(?:fo1_[A-Za-z0-9_\-]{43}|fm[12][ar]?_[A-Za-z0-9+/]{100,}={0,3})",
           "fo1_", "fm1_", "fm1a_", "fm1r_", "fm2_", "fm2a_", "fm2r_"),
    _token("heroku_key", r"HRKU-AA[0-9A-Za-z_\-]{58}", "hrku-"),
    _token("hashicorp_token", r"(?:hv[sb]\.[A-Za-z0-9_\-]{90,}|[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-=]{60,})",
           "hvs.", "hvb.", ".atlasv1."),
    _token("planetscale_token", r"pscale_(?:tkn|pw|oauth)_[A-Za-z0-9_=.\-]{32,}", "pscale_"),
    _token("pulumi_token", r"pul-[a-f0-9]{40}" + _R, "pul-", edge=_LD),
    _token("cloudflare_origin_key", r"v1\.0-[a-f0-9]{24}-[a-f0-9]{146}", "v1.0-"),
    _token("openshift_token", r"sha256~[A-Za-z0-9_\-]{43}", "sha256~"),
    _token("onepassword_token", r"ops_eyJ[A-Za-z0-9+/]{100,}={0,3}", "ops_eyj"),
    # Chat and mail.
    _token("slack_token",
           r"(?:xox[abposre]-[A-Za-z0-9\-]{10,}|xoxe\.xox[bp]-\d-[A-Za-z0-9]{100,}|xapp-\d-[A-Za-z0-9\-]{10,})",
           "xox", "xapp-", edge=_LD),
    _token("slack_webhook", r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_+\-]+",
           "hooks.slack.com", edge=""),
    _token("discord_webhook", r"discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_\-]+", "/api/webhooks/", edge=""),
    _token("teams_webhook", r"webhook\.office\.com/webhookb2/[^\s\"'\\<>]+", "webhook.office.com", edge=""),
    # Usually inside a URL (api.telegram.org/bot<token>/getMe): "bot" counts as an edge.
    _token("telegram_bot_token", r"\d{8,10}:AA[0-9A-Za-z_\-]{33}" + _R, ":aa",
           edge=r"(?:(?<![A-Za-z0-9_])|(?<=bot)|(?<=\\[nrt]))"),
    _token("sendgrid_key", r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}" + _R, "sg."),
    _token("sendinblue_key", r"xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}", "xkeysib-"),
    _token("mailchimp_key", r"[0-9a-f]{32}-us\d{1,2}" + _R, *(f"-us{d}" for d in range(10))),
    _token("mailgun_key", r"(?:key|pubkey)-[0-9a-f]{32}" + _R, "key-", edge=_LD),
    _token("linear_key", r"lin_api_[A-Za-z0-9]{40}" + _R, "lin_api_"),
    _token("notion_token", r"ntn_[0-9]{11}[A-Za-z0-9]{35}" + _R, "ntn_"),
    _token("postman_key", r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}" + _R, "pmak-"),
    _token("newrelic_key", r"NR(?:AK|JS|II)-[A-Za-z0-9\-]{19,32}" + _R, "nrak-", "nrjs-", "nrii-"),
    _token("sentry_token", r"sntry[su]_[A-Za-z0-9+/=_]{40,}", "sntrys_", "sntryu_"),
    _token("grafana_token", r"(?:glc_[A-Za-z0-9+/]{32,}={0,3}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|eyJrIjoi[A-Za-z0-9]{50,}={0,3})",
           "glc_", "glsa_", "eyjrijoi"),
    # Payments and commerce.
    _token("stripe_key", r"(?:(?:sk|rk|pk)_(?:live|test|prod)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,})",
           "k_live_", "k_test_", "k_prod_", "whsec_"),
    _token("square_token", r"sq0(?:atp|csp)-[0-9A-Za-z_\-]{22,}", "sq0atp-", "sq0csp-"),
    _token("shopify_token", r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}" + _R, "shpat_", "shpca_", "shppa_", "shpss_"),
    _token("shippo_token", r"shippo_(?:live|test)_[a-fA-F0-9]{40}" + _R, "shippo_"),
    _token("flutterwave_key", r"FLW(?:SECK|PUBK)_TEST-[a-hA-H0-9]{12,32}(?:-X)?", "flwseck_test-", "flwpubk_test-"),
    _token("duffel_token", r"duffel_(?:test|live)_[A-Za-z0-9_=\-]{43}", "duffel_"),
    _token("easypost_key", r"EZ[AT]K[A-Za-z0-9]{54}" + _R, "ezak", "eztk"),
    # Other SaaS tokens with a documented prefix.
    _token("contentful_token", r"CFPAT-[A-Za-z0-9_\-]{43}", "cfpat-"),
    _token("frameio_token", r"fio-u-[A-Za-z0-9_=\-]{64}", "fio-u-"),
    _token("prefect_token", r"pnu_[A-Za-z0-9]{36}" + _R, "pnu_"),
    _token("readme_token", r"rdme_[a-z0-9]{70}" + _R, "rdme_"),
    _token("scalingo_token", r"tk-us-[A-Za-z0-9_\-]{48}", "tk-us-"),
    _token("typeform_token", r"tfp_[A-Za-z0-9_=.\-]{59}", "tfp_"),
    _token("infracost_token", r"ico-[A-Za-z0-9]{32}" + _R, "ico-", edge=_LD),
    _token("settlemint_token", r"sm_[aps]at_[A-Za-z0-9]{16}" + _R, "sm_aat_", "sm_pat_", "sm_sat_"),
    _token("adobe_secret", r"p8e-[A-Za-z0-9]{32}" + _R, "p8e-", edge=_LD),
    _token("harness_token", r"(?:pat|sat)\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{20}", "pat.", "sat."),
    _token("maxmind_key", r"[A-Za-z0-9]{6}_[A-Za-z0-9]{29}_mmk" + _R, "_mmk"),
    # JWTs (any JWS; a trailing signature may be empty).
    _token("jwt", r"eyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}(?:\.[A-Za-z0-9_\-+/=]*)?", "eyj", edge=_LD),
    # Authorization headers.
    ("bearer_token", r"(?i)" + _L + r"((?:bearer|basic)[ \t]+)(?P<v>[A-Za-z0-9._~+/\-]{16,}=*)",
     ("bearer", "basic"), None),
    ("authorization_header",
     r"(?i)(authorization" + _Q + r"?[ \t]*[:=][ \t]*" + _Q + r"?(?:(?:bearer|basic|token|digest|apikey|key)[ \t]+)?)"
     r"(?P<v>[A-Za-z0-9._~+/\-]{8,}=*)",
     ("authorization",), None),
    # scheme://user:password@host: the user part and the host stay. The password may hold "/",
    # ":" and %-escapes; "@" only when another "@" follows before the host (p@ss@host).
    ("url_password",
     r"""(://)([^:/\s@"'\\\[\]<>]*)(:)(?P<v>(?:[^@\s"'\\<>:]|:(?!//)|@(?=[^\s"'\\<>/@]{0,64}@))+)(@)""",
     ("://",), None),
    # Structured config formats.
    ("docker_auth", r"""((?<![A-Za-z0-9_])auth\\{0,7}"[ \t]*:[ \t]*\\{0,7}")[A-Za-z0-9+/]{8,}={0,2}(?=\\{0,7}")""",
     ('auth\\', 'auth"'), r"\1[REDACTED:docker_auth]"),
    ("kube_client_key", r"(client-key-data" + _Q + r"?[ \t]*:[ \t]*" + _Q + r"?)[A-Za-z0-9+/]{16,}={0,2}",
     ("client-key-data",), r"\1[REDACTED:kube_client_key]"),
    ("xml_secret",
     r"(?i)(<(?P<name>[A-Za-z0-9_.:\-]{0,40}?(?:password|passwd|passphrase|secret|token|apikey|api[_\-]key|credentials?))>)"
     r"(?P<v>[^<\s][^<\r\n]*?)(</(?P=name)>)",
     ("password", "passwd", "passphrase", "secret", "token", "apikey", "api_key", "api-key", "credential"),
     None),
    ("xml_secret",
     r"(?i)(key=" + _Q + r"[A-Za-z0-9_.:\-]{0,40}?(?:password|passwd|secret|token|apikey)" + _Q
     + r"[ \t]+value=(?P<vq>\\{0,7}[\"']))(?P<v>[^\"'\\\r\n<>]+)((?P=vq))",
     ("value=",), None),
    # ADO.NET / ODBC connection strings: ;Password=two words;
    ("connection_string_password", r"(?i)(;[ \t]*(?:password|pwd)=[ \t]*)(?P<v>[^;\"'\\\r\n]+)(?=;|\\{0,7}[\"']|\\{1,7}[nr]|[\r\n]|$)",
     ("password=", "pwd="), None),
    # Command-line credentials.
    ("cli_password",
     r"(?<![\w\-])((?:mysql\w*|mariadb\w*)(?:[ \t]+[^\s|;&\\]+){0,12}?[ \t]+-p)(?P<v>" + _CLI_VALUE + r")",
     ("mysql", "mariadb"), None),
    ("cli_password", r"(?<![\w\-])(sshpass(?:[ \t]+-[a-oq-zA-Z]\S*){0,4}[ \t]+-p[ \t]*)(?P<v>" + _CLI_VALUE + r")",
     ("sshpass",), None),
    ("cli_password",
     r"(?<![\w\-])((?:-u|-U|--user|--proxy-user)(?:=|[ \t]+)" + _Q + r"?[^\s:\"'\\$]+:)(?P<v>[^\s\"'\\]+)",
     ("-u ", "-u\t", "-u=", "--user", "--proxy-user"), None),
    ("cli_password",
     r"(?<![\w\-])(--?(?:[A-Za-z0-9]+[_\-])*(?:(?:store|key|srcstore|deststore)?pass(?:word|wd|phrase|out|in)?|pwd|token|secret|"
     r"(?:api|secret|access|private|license|master|auth|encryption|client|signing)[_\-]?key)[ \t]+)"
     r"(?!-)(?P<v>" + _CLI_VALUE + r")",
     ("-pass", "_pass", "storepass", "keypass", "-pwd", "_pwd", "-token", "_token", "-secret", "_secret", "-key", "_key", "apikey",
      "secretkey", "accesskey", "privatekey", "licensekey", "masterkey", "authkey", "encryptionkey",
      "clientkey", "signingkey"), None),
    # .netrc: "machine h login u password p", on one line or one keyword per line.
    ("netrc_password",
     r"(?:(?<=[ \t])login[ \t]+[^\s\"'\\]+[ \t]+|" + _LINE_START + r"[ \t]*)(password[ \t]+)(?P<v>[^\s\"'\\]+)"
     r"(?=[ \t]*(?:$|[\r\n]|\\{1,7}[nr]|\\*\"|[ \t]+(?:machine|login|account|macdef|default)(?![\w\-])))",
     ("password",), None),
    # A secret name at the start of a line with a multi-word value (YAML, INI, .properties):
    # "password: correct horse battery staple", "secret = two words".
    ("secret",
     r"(?i)" + _LINE_START + r"(?P<pre>[ \t]*(?:-[ \t]+)?[A-Za-z0-9_.\-]{0,60}?" + _SECRET_NAME_TAIL + r")"
     r"(?P<sep>[ \t]*:[ \t]+|[ \t]+=[ \t]*|[ \t]*=[ \t]+)"
     r"""(?P<lv>[^\s"'\\`#][^\r\n"'\\`]{2,}+)""" + _LINE_END,
     _SECRET_NAME_MARKERS, None),
    # NAME=value, name: "value", "name": "value", export NAME='value', --password=value,
    # config["password"] = "value". An unquoted value is one word here; whether it is code
    # (primary_key=True, token = get_token()) the callback decides.
    ("secret",
     r"(?i)(?P<tail>" + _SECRET_NAME_TAIL + r")(?![A-Za-z0-9_])(?P<sep>(?:" + _Q + r"\]?)?" + _SEP + r")"
     r"(?:" + _DQ_VALUE + r"|" + _SQ_VALUE + r"|" + _BARE_VALUE + r")",
     _SECRET_NAME_MARKERS, None),
]
