"""The redaction battery: realistic secrets in the contexts they reach Claude Code in (shell
commands, config files, JSON, YAML, .env, source code, tool output), and ordinary code and prose
that must come through untouched.

Token formats follow gitleaks' default rules (config/gitleaks.toml) and detect-secrets' plugins;
every value is drawn from a seeded generator, so the cases are the same on every run and none is
a real credential. ``SECRET_CASES`` entries are ``(case_id, text, secrets)``: after redaction no
string of ``secrets`` may remain. ``ORDINARY_CASES`` are ``(case_id, text, expected)``: the text
after redaction (``None``: unchanged).
"""

from __future__ import annotations

import base64
import random
import string

_rng = random.Random(16_2026)

LOWER = string.ascii_lowercase
UPPER = string.ascii_uppercase
DIGITS = string.digits
HEX = "0123456789abcdef"
ALNUM = LOWER + UPPER + DIGITS
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "_-"


def rand(alphabet: str, n: int) -> str:
    """``n`` characters of ``alphabet``, with at least one lower, upper and digit where the
    alphabet has them (as a real random token of that length has, almost surely)."""
    while True:
        value = "".join(_rng.choice(alphabet) for _ in range(n))
        wanted = [cls for cls in (LOWER, UPPER, DIGITS) if set(cls) & set(alphabet)]
        if n < 12 or all(set(value) & set(cls) for cls in wanted):
            return value


def b64(n_bytes: int) -> str:
    return base64.b64encode(bytes(_rng.randrange(256) for _ in range(n_bytes))).decode()


def password() -> str:
    return rand(ALNUM, 6) + _rng.choice("!#%^&*-_+") + rand(ALNUM, 5)


def pem_body(lines: int = 6) -> list[str]:
    return [b64(48) for _ in range(lines)]


# ---------------------------------------------------------------------------------------------
# Secrets

SECRET_CASES: list[tuple[str, str, list[str]]] = []


def case(case_id: str, text: str, *secrets: str) -> None:
    SECRET_CASES.append((case_id, text, list(secrets)))


# Cloud providers
ak, sk = "AKIA" + rand(UPPER + "234567", 16), rand(B64, 40)
case("aws-credentials-file", f"[default]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\nregion = eu-west-1\n", ak, sk)
ak2, sk2 = "ASIA" + rand(UPPER + "234567", 16), rand(B64, 40)
session = "IQoJb3JpZ2luX2VjE" + rand(B64, 780)
case("aws-session-token-env-quoted-long",
     f'export AWS_ACCESS_KEY_ID={ak2}\nexport AWS_SECRET_ACCESS_KEY="{sk2}"\nexport AWS_SESSION_TOKEN="{session}"\n',
     ak2, sk2, session)
fwo = "FwoGZXIvYXdzE" + rand(B64, 300)
case("aws-sts-json-output",
     '{\n    "Credentials": {\n        "AccessKeyId": "' + ak2 + '",\n        "SecretAccessKey": "' + sk2
     + '",\n        "SessionToken": "' + fwo + '",\n        "Expiration": "2026-02-10T12:00:00Z"\n    }\n}', ak2, sk2, fwo)
sk3 = rand(B64, 40)
case("aws-configure-set", f"aws configure set aws_secret_access_key {sk3} --profile prod", sk3)
bedrock = "ABSK" + rand(B64, 132)
case("aws-bedrock-key", f"AWS_BEARER_TOKEN_BEDROCK={bedrock}", bedrock)
gkey = "AIza" + rand(URLSAFE, 35)
case("google-api-key-url", f"curl 'https://maps.googleapis.com/maps/api/geocode/json?address=Paris&key={gkey}'", gkey)
ya29 = "ya29.a0" + rand(URLSAFE, 120)
case("google-oauth-access-token", f"gcloud auth print-access-token\n{ya29}\n", ya29)
gocspx = "GOCSPX-" + rand(URLSAFE, 28)
case("google-oauth-client-secret-json", '{"installed":{"client_id":"1234-abc.apps.googleusercontent.com","client_secret":"' + gocspx + '"}}', gocspx)
gcp_pem = pem_body(8)
case("gcp-service-account-json",
     '{\n  "type": "service_account",\n  "project_id": "demo-1",\n  "private_key_id": "' + rand(HEX, 40)
     + '",\n  "private_key": "-----BEGIN PRIVATE KEY-----\\n' + "\\n".join(gcp_pem)
     + '\\n-----END PRIVATE KEY-----\\n",\n  "client_email": "svc@demo-1.iam.gserviceaccount.com"\n}', *gcp_pem)
acct = b64(64)
case("azure-storage-connection-string",
     f"AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={acct};EndpointSuffix=core.windows.net",
     acct)
sas = b64(32).replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
case("azure-sas-url",
     f"az storage blob download --blob-url 'https://acme.blob.core.windows.net/c/f.txt?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-03-01T00:00:00Z&spr=https&sig={sas}'",
     sas)
sbkey = b64(32)
case("azure-servicebus", f'"ServiceBus": "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={sbkey}"', sbkey)
azsecret = rand(ALNUM, 3) + "8Q~" + rand(URLSAFE + "~.", 34)
case("azure-ad-client-secret", f"az login --service-principal -u 0f8fad5b-d9cb-469f-a165-70867728950e -p {azsecret} --tenant acme.onmicrosoft.com", azsecret)
s3sig = rand(HEX, 64)
case("s3-presigned-url",
     "https://bucket.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" + ak
     + "%2F20260210%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260210T000000Z&X-Amz-Expires=3600&X-Amz-Signature=" + s3sig,
     ak, s3sig)
do_pat, do_oauth, do_refresh = "dop_v1_" + rand(HEX, 64), "doo_v1_" + rand(HEX, 64), "dor_v1_" + rand(HEX, 64)
case("digitalocean-doctl", f"doctl auth init --access-token {do_pat}", do_pat)
case("digitalocean-oauth-json", '{"access_token": "' + do_oauth + '", "refresh_token": "' + do_refresh + '"}', do_oauth, do_refresh)
alibaba = "LTAI" + rand(ALNUM, 20)
case("alibaba-access-key", f"aliyun configure set --access-key-id {alibaba}", alibaba)
heroku = "HRKU-AA" + rand(URLSAFE, 58)
case("heroku-api-key", f"heroku auth:token\n{heroku}", heroku)
dbx = "dapi" + rand(HEX, 32)
case("databricks-token", f"databricks configure --token\nToken: {dbx}", dbx)
hvs = "hvs." + rand(URLSAFE, 95)
case("vault-token", f"vault login {hvs}", hvs)
tfc = rand(ALNUM, 14) + ".atlasv1." + rand(URLSAFE, 67)
case("terraform-cloud-token", 'credentials "app.terraform.io" {\n  token = "' + tfc + '"\n}', tfc)
cf_origin = "v1.0-" + rand(HEX, 24) + "-" + rand(HEX, 146)
case("cloudflare-origin-ca-key", f"CF_ORIGIN_CA_KEY={cf_origin}", cf_origin)
doppler = "dp.pt." + rand(ALNUM, 43)
case("doppler-token", f"doppler configure set token {doppler}", doppler)
dyna = "dt0c01." + rand(UPPER + DIGITS, 24) + "." + rand(UPPER + DIGITS, 64)
case("dynatrace-token", f"curl -H 'Authorization: Api-Token {dyna}' https://x.live.dynatrace.com/api/v2/metrics", dyna)
fly = "fo1_" + rand(URLSAFE, 43)
case("flyio-token", f"FLY_API_TOKEN={fly} fly deploy", fly)
pscale = "pscale_tkn_" + rand(URLSAFE, 43)
case("planetscale-token", f"pscale auth login --service-token {pscale}", pscale)
pulumi = "pul-" + rand(HEX, 40)
case("pulumi-token", f"$ pulumi login\nEnter your access token: {pulumi}", pulumi)
oshift = "sha256~" + rand(URLSAFE, 43)
case("openshift-token", f"oc login --token={oshift} --server=https://api.crc.testing:6443", oshift)

# AI providers
ant = "sk-ant-api03-" + rand(URLSAFE, 93) + "AA"
case("anthropic-key-python", f'client = anthropic.Anthropic(api_key="{ant}")', ant)
oai = "sk-proj-" + rand(URLSAFE, 74) + "T3BlbkFJ" + rand(URLSAFE, 74)
case("openai-key-env", f"OPENAI_API_KEY={oai}", oai)
oai_legacy = "sk-" + rand(ALNUM, 20) + "T3BlbkFJ" + rand(ALNUM, 20)
case("openai-key-legacy-bare", f"Using key {oai_legacy} for the batch job", oai_legacy)
hf = "hf_" + rand(LOWER + UPPER, 34)
case("huggingface-bare", f"The download failed; I used {hf} as the token.", hf)
hf2 = "hf_" + rand(LOWER + UPPER, 34)
case("huggingface-cli", f"huggingface-cli login --token {hf2} --add-to-git-credential", hf2)
hf3 = "hf_" + rand(LOWER + UPPER, 34)
case("huggingface-python", f'from huggingface_hub import login\nlogin("{hf3}")', hf3)
groq = "gsk_" + rand(ALNUM, 52)
case("groq-key", f"export GROQ_API_KEY='{groq}'", groq)
xai = "xai-" + rand(ALNUM, 80)
case("xai-key", f'headers = {{"Authorization": f"Bearer {{os.environ[\'X\']}}"}}  # was {xai}', xai)
pplx = "pplx-" + rand(ALNUM, 48)
case("perplexity-key", f"PERPLEXITY_API_KEY: {pplx}", pplx)
r8 = "r8_" + rand(ALNUM, 37)
case("replicate-token", f"REPLICATE_API_TOKEN={r8} python predict.py", r8)

# Code hosts
ghp = "ghp_" + rand(ALNUM, 36)
case("github-pat-remote-url", f"git remote set-url origin https://{ghp}@github.com/acme/app.git", ghp)
gho, ghs = "gho_" + rand(ALNUM, 36), "ghs_" + rand(ALNUM, 36)
case("github-hosts-yml", f"github.com:\n    oauth_token: {gho}\n    user: dev\n    git_protocol: https\n", gho)
case("github-app-installation-token", '{"token": "' + ghs + '", "expires_at": "2026-02-10T12:00:00Z"}', ghs)
ghpat = "github_pat_" + rand(ALNUM, 22) + "_" + rand(ALNUM, 59)
case("github-fine-grained", f"gh auth login --with-token <<< {ghpat}", ghpat)
glpat = "glpat-" + rand(URLSAFE, 20)
case("gitlab-pat-remote", f"git clone https://oauth2:{glpat}@gitlab.com/acme/app.git", glpat)
glpat2 = "glpat-" + rand(URLSAFE, 20)
case("gitlab-pat-header", f'curl --header "PRIVATE-TOKEN: {glpat2}" "https://gitlab.example.com/api/v4/projects"', glpat2)
gldt, glrt, glptt = "gldt-" + rand(URLSAFE, 20), "glrt-" + rand(URLSAFE, 20), "glptt-" + rand(HEX, 40)
case("gitlab-deploy-token-bare", f"Deploy token created: {gldt}", gldt)
case("gitlab-runner-token", f"gitlab-runner register --url https://gitlab.com --token {glrt}", glrt)
case("gitlab-trigger-token", f'curl -X POST -F token={glptt} -F ref=main https://gitlab.com/api/v4/projects/1/trigger/pipeline', glptt)
glcbt = "glcbt-" + rand(ALNUM, 2) + "_" + rand(URLSAFE, 20)
case("gitlab-job-token", f"CI_JOB_TOKEN {glcbt}", glcbt)
bb = "ATBB" + rand(ALNUM, 32)
case("bitbucket-app-password", f"git push https://dev:{bb}@bitbucket.org/acme/app.git", bb)
atl = "ATATT3" + rand(URLSAFE, 186)
case("atlassian-api-token", f"JIRA_API_TOKEN={atl}", atl)

# Package registries
npm = "npm_" + rand(ALNUM, 36)
case("npmrc-auth-token", f"//registry.npmjs.org/:_authToken={npm}\n", npm)
npm2 = "npm_" + rand(ALNUM, 36)
case("npm-token-bare", f"npm token create\n┌────────┐\n│ token  │ {npm2} │\n└────────┘", npm2)
npm_auth = b64(24)
case("npmrc-legacy-auth", f"registry=https://npm.acme.dev/\n_auth={npm_auth}\nalways-auth=true\n", npm_auth)
pypi = "pypi-AgEIcHlwaS5vcmc" + rand(URLSAFE, 150)
case("pypirc", f"[pypi]\n  username = __token__\n  password = {pypi}\n", pypi)
pypi2 = "pypi-AgEIcHlwaS5vcmc" + rand(URLSAFE, 150)
case("twine-upload", f"twine upload -u __token__ -p {pypi2} dist/*", pypi2)
gems = "rubygems_" + rand(HEX, 48)
case("rubygems-credentials", f"---\n:rubygems_api_key: {gems}\n", gems)
clojars = "CLOJARS_" + rand(LOWER + DIGITS, 60)
case("clojars-token", f"export CLOJARS_PASSWORD={clojars}", clojars)
art = "AKCp" + rand(ALNUM, 69)
case("artifactory-api-key", f"curl -H 'X-JFrog-Art-Api: {art}' https://acme.jfrog.io/artifactory/api/repositories", art)

# Chat, mail, webhooks
xoxb = f"xoxb-{rand(DIGITS, 12)}-{rand(DIGITS, 13)}-{rand(ALNUM, 24)}"
case("slack-bot-token", f"SLACK_BOT_TOKEN={xoxb}", xoxb)
xoxp = f"xoxp-{rand(DIGITS, 12)}-{rand(DIGITS, 12)}-{rand(DIGITS, 13)}-{rand(HEX, 32)}"
case("slack-user-token-json", '{"ok": true, "access_token": "' + xoxp + '"}', xoxp)
hook_path = f"T{rand(UPPER + DIGITS, 10)}/B{rand(UPPER + DIGITS, 10)}/{rand(ALNUM, 24)}"
case("slack-webhook", f"curl -X POST -d '{{\"text\":\"deployed\"}}' https://hooks.slack.com/services/{hook_path}", hook_path)
discord = f"{rand(DIGITS, 18)}/{rand(URLSAFE, 68)}"
case("discord-webhook", f"DISCORD_WEBHOOK=https://discord.com/api/webhooks/{discord}", discord)
teams = f"{rand(HEX, 8)}-{rand(HEX, 4)}-{rand(HEX, 4)}-{rand(HEX, 4)}-{rand(HEX, 12)}@{rand(HEX, 8)}/IncomingWebhook/{rand(HEX, 32)}"
case("teams-webhook", f"webhook_url: https://acme.webhook.office.com/webhookb2/{teams}", teams)
tg = f"{rand(DIGITS, 10)}:AA{rand(URLSAFE, 33)}"
case("telegram-bot-token", f"curl https://api.telegram.org/bot{tg}/getMe", tg)
sg = f"SG.{rand(URLSAFE, 22)}.{rand(URLSAFE, 43)}"
case("sendgrid-bare-in-code", f'sg = SendGridAPIClient("{sg}")', sg)
sg2 = f"SG.{rand(URLSAFE, 22)}.{rand(URLSAFE, 43)}"
case("sendgrid-env", f"SENDGRID_API_KEY={sg2}", sg2)
brevo = f"xkeysib-{rand(HEX, 64)}-{rand(ALNUM, 16)}"
case("sendinblue-key", f"BREVO_KEY = '{brevo}'", brevo)
mc = f"{rand(HEX, 32)}-us{_rng.randrange(1, 21)}"
case("mailchimp-key", f"mailchimp = Client()\nmailchimp.set_config({{'api_key': '{mc}', 'server': 'us6'}})", mc)
mg = "key-" + rand(HEX, 32)
case("mailgun-key", f"curl -s --user 'api:{mg}' https://api.mailgun.net/v3/acme.dev/messages", mg)
linear = "lin_api_" + rand(ALNUM, 40)
case("linear-key", f"LINEAR_API_KEY={linear}", linear)
notion = "ntn_" + rand(DIGITS, 11) + rand(ALNUM, 35)
case("notion-token", f'const notion = new Client({{ auth: "{notion}" }})', notion)
pmak = f"PMAK-{rand(HEX, 24)}-{rand(HEX, 34)}"
case("postman-key", f"postman login --with-api-key {pmak}", pmak)
nr = "NRAK-" + rand(UPPER + DIGITS, 27)
case("newrelic-key", f"NEW_RELIC_API_KEY={nr}", nr)
sentry = "sntryu_" + rand(HEX, 64)
case("sentry-token", f"sentry-cli --auth-token {sentry} releases list", sentry)
glc = "glc_" + rand(ALNUM, 80) + "=="
case("grafana-cloud-token", f"GRAFANA_CLOUD_TOKEN: {glc}", glc)

# Payments and commerce
stripe = "sk_live_" + rand(ALNUM, 99)
case("stripe-secret-key", f"stripe.api_key = '{stripe}'", stripe)
rk = "rk_test_" + rand(ALNUM, 24)
case("stripe-restricted-key", f"curl https://api.stripe.com/v1/charges -u {rk}:", rk)
whsec = "whsec_" + rand(ALNUM, 32)
case("stripe-webhook-secret", f"> Ready! Your webhook signing secret is {whsec} (^C to quit)", whsec)
sq = "sq0atp-" + rand(URLSAFE, 22)
case("square-token", f"SQUARE_ACCESS_TOKEN={sq}", sq)
shp = "shpat_" + rand(HEX, 32)
case("shopify-token", f'ShopifyAPI::Session.new(domain: "acme.myshopify.com", token: "{shp}")', shp)
shippo = "shippo_live_" + rand(HEX, 40)
case("shippo-token", f"Authorization: ShippoToken {shippo}", shippo)
flw = "FLWSECK_TEST-" + rand(HEX, 32) + "-X"
case("flutterwave-key", f"FLW_SECRET_KEY={flw}", flw)
duffel = "duffel_test_" + rand(URLSAFE, 43)
case("duffel-token", f"client = Duffel(access_token='{duffel}')", duffel)
ezak = "EZAK" + rand(ALNUM, 54)
case("easypost-key", f"EasyPost::Client.new(api_key: '{ezak}')", ezak)

# Other SaaS tokens with documented prefixes
age = "AGE-SECRET-KEY-1" + rand("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)
case("age-key-file", f"# created: 2026-02-10T10:00:00Z\n# public key: age1{rand(LOWER + DIGITS, 58)}\n{age}\n", age)
ops = "ops_eyJ" + rand(B64, 300)
case("1password-service-account", f"export OP_SERVICE_ACCOUNT_TOKEN={ops}", ops)
cfpat = "CFPAT-" + rand(URLSAFE, 43)
case("contentful-token", f"contentful login --management-token {cfpat}", cfpat)
prefect = "pnu_" + rand(ALNUM, 36)
case("prefect-key", f"prefect cloud login -k {prefect}", prefect)
rdme = "rdme_" + rand(LOWER + DIGITS, 70)
case("readme-key", f"rdme openapi --key={rdme}", rdme)
tfp = "tfp_" + rand(URLSAFE, 59)
case("typeform-token", f"TYPEFORM_TOKEN={tfp}", tfp)
ico = "ico-" + rand(ALNUM, 32)
case("infracost-key", f"infracost configure set api_key {ico}", ico)
harness = f"pat.{rand(URLSAFE, 22)}.{rand(ALNUM, 24)}.{rand(ALNUM, 20)}"
case("harness-token", f"x-api-key: {harness}", harness)
frame = "fio-u-" + rand(URLSAFE, 64)
case("frameio-token", f"FRAMEIO_TOKEN={frame}", frame)

# JWTs, authorization headers
jwt = ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + "eyJ" + rand(URLSAFE, 120) + "." + rand(URLSAFE, 342))
case("jwt-cookie", f"Set-Cookie: session={jwt}; Path=/; HttpOnly", jwt)
bearer = rand(ALNUM + "._-", 48)
case("bearer-header", f'curl -H "Authorization: Bearer {bearer}" https://api.acme.dev/v1/me', bearer)
basic = base64.b64encode(f"admin:{password()}".encode()).decode()
case("basic-auth-header", f"GET /admin HTTP/1.1\nHost: acme.dev\nAuthorization: Basic {basic}\n", basic)
drf = rand(HEX, 40)
case("token-auth-header", f"http GET :8000/api/items 'Authorization: Token {drf}'", drf)
api_header = rand(ALNUM, 32)
case("x-api-key-header", f"curl -H 'x-api-key: {api_header}' https://api.acme.dev", api_header)

# URLs with credentials
pg = password()
case("postgres-url", f"DATABASE_URL=postgres://app:{pg}@db.internal:5432/app", pg)
redis_pw = rand(ALNUM, 20)
case("redis-url-no-user", f"REDIS_URL=redis://:{redis_pw}@cache.internal:6379/0", redis_pw)
slash_pw = rand(ALNUM, 6) + "/" + rand(ALNUM, 6) + "+" + rand(ALNUM, 4)
case("url-password-with-slash", f"psql postgresql://admin:{slash_pw}@10.0.0.5/prod -c 'select 1'", slash_pw)
enc_pw = rand(ALNUM, 5) + "%40" + rand(ALNUM, 5) + "%2F" + rand(ALNUM, 3)
case("url-password-urlencoded", f'MONGO_URI="mongodb+srv://admin:{enc_pw}@cluster0.x1y2z.mongodb.net/app?retryWrites=true"', enc_pw)
at_pw = rand(ALNUM, 5) + "@" + rand(ALNUM, 6)
case("url-password-with-at", f"amqp://guest:{at_pw}@rabbit:5672/", at_pw)
git_pw = rand(ALNUM, 16)
case("git-credentials-file", f"https://dev:{git_pw}@git.acme.dev\n", git_pw)

# Command-line credentials
curl_pw = password()
case("curl-user-pass", f"curl -u deploy:{curl_pw} https://ci.acme.dev/api/json", curl_pw)
curl_pw2 = password()
case("curl-user-long-flag", f"curl --user 'admin:{curl_pw2}' -X DELETE https://es.acme.dev:9200/logs", curl_pw2)
my_pw = password()
case("mysql-p-attached", f"mysql -h db.acme.dev -u root -p{my_pw} shop -e 'show tables'", my_pw)
my_pw2 = password()
case("mysqldump-password-flag", f"mysqldump --user=admin --password={my_pw2} --all-databases > dump.sql", my_pw2)
my_pw3 = rand(ALNUM, 14)
case("mysql-quoted-p", f"docker exec -it db mysql -uroot -p'{my_pw3}' -e 'select 1'", my_pw3)
ssh_pw = password()
case("sshpass", f"sshpass -p '{ssh_pw}' ssh -o StrictHostKeyChecking=no deploy@10.0.0.7 uptime", ssh_pw)
ssh_pw2 = rand(ALNUM, 12)
case("sshpass-unquoted", f"sshpass -p {ssh_pw2} scp build.tgz deploy@host:/srv", ssh_pw2)
cli_pw = password()
case("password-flag-space", f"docker login registry.acme.dev --username ci --password {cli_pw}", cli_pw)
cli_tok = rand(ALNUM, 32)
case("token-flag-space", f"vercel deploy --prod --token {cli_tok}", cli_tok)
storepass = rand(ALNUM, 12)
case("keytool-storepass", f"keytool -importcert -keystore app.jks -storepass {storepass} -file ca.pem", storepass)
openssl_pw = rand(ALNUM, 14)
case("openssl-passout", f"openssl pkcs12 -export -in cert.pem -inkey key.pem -out cert.p12 -passout pass:{openssl_pw}", openssl_pw)
pg_env = password()
case("pgpassword-env", f"PGPASSWORD={pg_env} psql -h localhost -U postgres -c '\\l'", pg_env)
docker_env = password()
case("docker-run-env", f"docker run -d -e POSTGRES_PASSWORD={docker_env} -p 5432:5432 postgres:16", docker_env)
helm_pw = password()
case("helm-set", f"helm install db bitnami/postgresql --set auth.postgresPassword={helm_pw}", helm_pw)

# Config files
netrc_pw = rand(HEX, 40)
case("netrc-multiline", f"machine api.heroku.com\n  login dev@acme.dev\n  password {netrc_pw}\nmachine git.heroku.com\n", netrc_pw)
netrc_pw2 = password()
case("netrc-one-line", f"machine ftp.acme.dev login deploy password {netrc_pw2}\n", netrc_pw2)
docker_auth = base64.b64encode(f"ci:{password()}".encode()).decode()
case("docker-config-json",
     '{\n  "auths": {\n    "https://index.docker.io/v1/": {\n      "auth": "' + docker_auth + '"\n    }\n  }\n}', docker_auth)
kube_key = base64.b64encode(("-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(pem_body(4))
                             + "\n-----END RSA PRIVATE KEY-----\n").encode()).decode()
kube_token = rand(HEX, 64)
case("kubeconfig",
     "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n"
     f"    client-key-data: {kube_key}\n- name: ci\n  user:\n    token: {kube_token}\n", kube_key, kube_token)
k8s_b64 = base64.b64encode(password().encode()).decode()
case("k8s-secret-yaml", f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: {k8s_b64}\n", k8s_b64)
yaml_words = "correct horse battery staple"
case("yaml-password-two-words", f"database:\n  user: app\n  password: {yaml_words}\n  host: db\n", yaml_words)
ini_pw = "two words"
case("ini-password-spaces", f"[database]\nuser = app\npassword = {ini_pw}\nport = 5432\n", ini_pw)
env_secrets = [rand(ALNUM, 50), rand(HEX, 64), password(), rand(B64, 44)]
case("dotenv-file",
     f"DEBUG=false\nSECRET_KEY={env_secrets[0]}\nJWT_SECRET={env_secrets[1]}\nDB_PASSWORD={env_secrets[2]}\n"
     f"ENCRYPTION_KEY={env_secrets[3]}\nPORT=8000\n", *env_secrets)
esc = rand(ALNUM, 5) + '\\"' + rand(ALNUM, 6)
case("quoted-value-with-escaped-quote", f'DB_PASSWORD="{esc}"', esc.replace('\\"', '"'), esc.split('\\"')[1])
json_esc = rand(ALNUM, 6) + '\\"' + rand(ALNUM, 6)
case("json-value-with-escaped-quote", '{"user": "app", "password": "' + json_esc + '"}', json_esc.split('\\"')[1])
long_quoted = rand(B64, 600)
case("quoted-value-longer-than-256", f"api_token: '{long_quoted}'", long_quoted)
tf_pw = password()
case("terraform-password", f'resource "azurerm_mssql_server" "db" {{\n  administrator_login          = "sqladmin"\n  administrator_login_password = "{tf_pw}"\n}}', tf_pw)
maven_pw = password()
case("maven-settings-xml", f"<server>\n  <id>nexus</id>\n  <username>deploy</username>\n  <password>{maven_pw}</password>\n</server>", maven_pw)
nuget_pw = password()
case("nuget-config", f'<packageSourceCredentials><acme>\n  <add key="Username" value="ci" />\n  <add key="ClearTextPassword" value="{nuget_pw}" />\n</acme></packageSourceCredentials>', nuget_pw)
conn_pw = "my " + rand(ALNUM, 8) + " pass"
case("ado-connection-string", f"Server=tcp:acme.database.windows.net,1433;Database=app;User ID=app;Password={conn_pw};Encrypt=True;", conn_pw)
spring_pw = password()
case("spring-properties", f"spring.datasource.url=jdbc:postgresql://db:5432/app\nspring.datasource.password={spring_pw}\n", spring_pw)
gha = rand(ALNUM, 40)
case("github-actions-env", f"    env:\n      DEPLOY_TOKEN: {gha}\n      NODE_ENV: production\n", gha)
js_key = rand(ALNUM, 32)
case("js-object-apikey", f'const client = new Client({{ apiKey: "{js_key}", region: "eu" }});', js_key)
py_pw = password()
case("python-kwarg-literal", f"conn = psycopg.connect(host='db', user='app', password='{py_pw}')", py_pw)
go_tok = rand(ALNUM, 40)
case("go-struct-literal", f'cfg := Config{{\n\tEndpoint: "https://api.acme.dev",\n\tToken:    "{go_tok}",\n}}', go_tok)
php_pw = password()
case("php-array", f"'password' => '{php_pw}',", php_pw)
toml_tok = rand(ALNUM, 36)
case("toml-token", f'[registries.acme]\ntoken = "{toml_tok}"\n', toml_tok)
ruby_secret = rand(HEX, 128)
case("rails-secret-key-base", f"production:\n  secret_key_base: {ruby_secret}\n", ruby_secret)
django = "django-insecure-" + rand(LOWER + DIGITS + "!@#$%^&*(-_=+)", 50).replace("'", "")
case("django-secret-key", f"SECRET_KEY = '{django}'", django)
client_secret = rand(URLSAFE, 40)
case("oauth-client-secret-yaml", f"oauth:\n  client_id: web-app\n  client_secret: {client_secret}\n", client_secret)
nested_pw = password()
case("json-in-json-tool-output", '{"stdout": "{\\"db\\": {\\"password\\": \\"' + nested_pw + '\\"}}"}', nested_pw)

# Private keys
rsa = pem_body(8)
case("pem-rsa-cat", "$ cat ~/.ssh/id_rsa\n-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(rsa) + "\n-----END RSA PRIVATE KEY-----\n", *rsa)
ossh = pem_body(6)
case("pem-openssh", "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(ossh) + "\n-----END OPENSSH PRIVATE KEY-----", *ossh)
ec = pem_body(3)
case("pem-ec-truncated-head", "$ head -4 server.key\n-----BEGIN EC PRIVATE KEY-----\n" + "\n".join(ec) + "\n", *ec)
py_pem = pem_body(5)
case("pem-python-concatenated-literals",
     'KEY = (\n    "-----BEGIN PRIVATE KEY-----\\n"\n' + "".join(f'    "{line}\\n"\n' for line in py_pem)
     + '    "-----END PRIVATE KEY-----\\n"\n)', *py_pem)
js_pem = pem_body(4)
case("pem-js-plus-concatenation",
     "const key = '-----BEGIN RSA PRIVATE KEY-----\\n' +\n" + "".join(f"  '{line}\\n' +\n" for line in js_pem)
     + "  '-----END RSA PRIVATE KEY-----';", *js_pem)
go_pem = pem_body(4)
case("pem-go-concatenation",
     'const testKey = "-----BEGIN EC PRIVATE KEY-----\\n" +\n' + "".join(f'\t"{line}\\n" +\n' for line in go_pem)
     + '\t"-----END EC PRIVATE KEY-----\\n"', *go_pem)
pgp = pem_body(5)
case("pgp-private-key-block", "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n" + "\n".join(pgp) + "\n=abcd\n-----END PGP PRIVATE KEY BLOCK-----", *pgp)
ppk = pem_body(4)
case("putty-ppk", "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: dev\nPublic-Lines: 2\nAAAAC3NzaC1lZDI1NTE5\nAAAAIHZ\nPrivate-Lines: 4\n"
     + "\n".join(ppk) + "\nPrivate-MAC: " + rand(HEX, 64) + "\n", *ppk)

# ---------------------------------------------------------------------------------------------
# Ordinary code and prose: unchanged (expected None) or only the value lost.

ORDINARY_CASES: list[tuple[str, str, str | None]] = [
    ("env-lookup-getenv", 'API_KEY = os.getenv("API_KEY")', None),
    ("env-lookup-environ", 'aws_secret = os.environ["AWS_SECRET_ACCESS_KEY"]', None),
    ("env-lookup-node", "const token = process.env.GITHUB_TOKEN;", None),
    ("env-lookup-rust", 'let token = std::env::var("API_TOKEN").expect("set API_TOKEN");', None),
    ("env-lookup-ruby", 'SECRET_KEY_BASE = ENV.fetch("SECRET_KEY_BASE")', None),
    ("env-lookup-java", 'String password = System.getenv("DB_PASSWORD");', None),
    ("env-lookup-go", 'token := os.Getenv("TOKEN")', None),
    ("env-reference-shell", "export GITHUB_TOKEN=$(gh auth token)", None),
    ("env-reference-yaml", "password: ${DB_PASSWORD}\ntoken: ${{ secrets.DEPLOY_TOKEN }}", None),
    ("attribute-access", "token = self.token", None),
    ("attribute-assign", "self.api_key = api_key", None),
    ("settings-attribute", "api_key = settings.OPENAI_API_KEY", None),
    ("function-call", "password = get_password()", None),
    ("function-call-args", "token = jwt.encode(payload, secret, algorithm='HS256')", None),
    ("keyword-passthrough", "connect(host=host, password=password)", None),
    ("snake-case-variable", "password = db_password", None),
    ("secret-then-prose", "Set secret=abc then run the full test suite",
     "Set secret=[REDACTED:secret] then run the full test suite"),
    ("numeric-max-token", "max_token = 4096", None),
    ("numeric-json", '{"secret_rotation_days": 90, "token": 0}', None),
    ("sk-package-name", "pip install sk-video-processing-library", None),
    ("sk-prose", "the sk-learn-style estimator API (sk-compatible-transformers)", None),
    ("git-sha", "commit 3f786850e387550fdab836ed7e6dc881de23001b\nAuthor: Dev <dev@acme.dev>", None),
    ("sha256-digest", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  app.tar.gz", None),
    ("docker-digest", "image: postgres@sha256:4d4b5b3f8f5c9a1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796", None),
    ("uuid", "session 550e8400-e29b-41d4-a716-446655440000 resumed", None),
    ("primary-key", "id: int | None = Field(default=None, primary_key=True)", None),
    ("type-annotation", "def login(username: str, password: str) -> Token:", None),
    ("type-annotation-optional", "api_key: Optional[str] = None", None),
    ("typescript-field", "interface Creds {\n  token: string;\n  password?: string;\n}", None),
    ("go-struct-tag", 'type Auth struct {\n\tToken string `json:"token"`\n}', None),
    ("identifiers", "for token in tokenizer.tokenize(text):\n    if token.is_secret_marker: continue", None),
    ("usage-json", '{"usage": {"input_tokens": 1532, "output_tokens": 211, "cache_read_input_tokens": 0}}', None),
    ("prose-token-password", "Rotate the API token every 90 days; the password must be at least 12 characters.", None),
    ("prose-colon", "Note the token: expired tokens are refreshed automatically.", None),
    ("cache-key", 'cache_key = f"user:{user_id}"', None),
    ("docker-uid-gid", "docker run --rm -u 1000:1000 -v $PWD:/src golang:1.22 go build ./...", None),
    ("ssh-port", "ssh -p 2222 deploy@10.0.0.7 'mkdir -p /srv/app'", None),
    ("mysql-prompt", "mysql -u root -p shop", None),
    ("localhost-port-at", "open http://localhost:5173/@vite/client and https://example.com:443/users/me@example.com", None),
    ("git-ssh-remote", "git@github.com:acme/app.git and ssh://git@host:22/repo.git", None),
    ("password-stdin", "echo $CR_PAT | docker login ghcr.io -u dev --password-stdin", None),
    ("token-file-flag", "gh auth login --with-token < token.txt && kubectl --token-file=/var/run/token get pods", None),
    ("bearer-reference", 'curl -H "Authorization: Bearer $TOKEN" -H "Authorization: Bearer ${API_TOKEN}" https://api', None),
    ("bearer-prose", "Bearer tokens are sent in the Authorization header; Basic auth is configured elsewhere.", None),
    ("keyring-call", 'password = keyring.get_password("ccrl", user)', None),
    ("constant-name", "PASSWORD_MIN_LENGTH = 12\nTOKEN_EXPIRY_SECONDS = 3600", None),
    ("password-hash-call", "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())", None),
    ("random-secret-call", "secret = secrets.token_hex(32)", None),
    ("go-form-value", 'password := r.FormValue("password")', None),
    ("k8s-secret-ref", "valueFrom:\n  secretKeyRef:\n    name: db-credentials\n    key: password", None),
    ("markdown-table", "| option | meaning |\n|---|---|\n| `--token` | the API token to use |", None),
    ("html-input", '<input type="password" name="password" autocomplete="current-password">', None),
    ("sql-column", "ALTER TABLE users ADD COLUMN password_digest TEXT NOT NULL;", None),
    ("test-assertion", "assert token is not None and len(token) == 32", None),
    ("placeholder", "api_key: <your-api-key>\nAPI_KEY=${API_KEY}\ntoken: '***'", None),
    ("already-redacted-corpus", "export API_KEY=REDACTED and token=[REDACTED]", None),
]


# ---------------------------------------------------------------------------------------------
# Adversarial inputs: long runs of what makes a pattern start, continue or backtrack, with the
# output they must give. A pattern that rescans (quadratic) or backtracks (exponential) takes
# minutes on these; a linear one, milliseconds (benchmarks/redact_rules.py times them).

def adversarial_inputs(size: int = 300_000) -> list[tuple[str, str, str]]:
    """``(case_id, text, expected redaction)``, each text about ``size`` characters."""
    items: list[tuple[str, str, str]] = []

    def rep(unit: str) -> str:
        return unit * max(1, size // len(unit))

    def adv(case_id: str, text: str, expected: str | None = None) -> None:
        items.append((case_id, text, text if expected is None else expected))

    n = lambda unit: max(1, size // len(unit))  # noqa: E731 (how many times rep() repeats unit)
    adv("url-scheme-colon", rep("a://b:"))
    adv("url-separators", rep("://"))
    adv("url-password-colons-no-at", "x://u:" + rep("p:"))
    adv("url-password-many-at", "x://u:" + rep("p@"), "x://u:[REDACTED:url_password]@")
    adv("url-user-no-colon", rep("://user@"))
    adv("jwt-dash-runs", rep("-eyJ"))
    adv("jwt-one-run", rep("eyJ"))
    adv("jwt-first-part-only", rep("eyJaaaaa.x"))
    adv("jwt-two-parts", rep("eyJhbGciOi.eyJzdWIiOi "), "[REDACTED:jwt] " * n("eyJhbGciOi.eyJzdWIiOi "))
    k = n('token=\\"')
    adv("secret-unclosed-quotes", rep('token=\\"'), 'token=\\"[REDACTED:secret]\\"' * (k // 2) + 'token=\\"' * (k % 2))
    adv("secret-backslash-run", 'password="' + "\\" * size)
    adv("secret-escaped-quotes-unclosed", 'password="' + rep('\\"'))
    adv("secret-nested-level-quotes", "password=" + rep('\\\\\\"x'))
    adv("secret-separator-spaces", "token" + " " * size + "x")
    adv("secret-name-run", "a" * size + "_token=abc123", "a" * size + "_token=[REDACTED:secret]")
    adv("secret-assignment-chain", rep("x_token="), "x_token=[REDACTED:secret]")
    adv("line-value-trailing-spaces", "\npassword: a" + " " * size + "'x")
    adv("line-many-starts", rep("\npassword: x y"), "\npassword: [REDACTED:secret]" * n("\npassword: x y"))
    adv("line-quote-starts", rep("'password "))
    adv("pem-begin-lines", rep("-----BEGIN PRIVATE KEY-----"), "[REDACTED:private_key]" * n("-----BEGIN PRIVATE KEY-----"))
    adv("pem-dashes", "-----BEGIN PRIVATE KEY-----" + "-" * size, "[REDACTED:private_key]")
    adv("pem-base64-prefix", rep("LS0tLS1CRUdJTi"))
    adv("mysql-words", rep("mysql "))
    adv("cli-flag-dashes", rep("--a-"))
    adv("cli-user-flags", rep("curl -u "))
    adv("cli-password-flags", rep("--password "))
    adv("bearer-words", rep("Bearer "))
    adv("authorization-words", rep("Authorization: "))
    adv("xml-open-tags", rep("<password>a"))
    adv("connection-string-empty", rep(";password="))
    adv("netrc-logins", rep(" login x"))
    adv("telegram-digit-run", "1" * size + ":AA")
    adv("hex-run", "a" * size + "-us1")
    adv("token-prefix-run", rep("sk-"))
    adv("hf-underscores", rep("hf_a"))
    return items
