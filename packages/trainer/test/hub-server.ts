import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

// A local stand-in for the Hugging Face hub: the endpoints the hub client calls, with the headers the real
// hub sends (x-repo-commit, etag / x-linked-etag, x-linked-size, x-error-code, Range answers), and
// misbehaviour on request (dropped connections, ignored ranges, corrupted bytes, a wrong listed size).

export interface FakeRepo {
  type: 'model' | 'dataset';
  id: string;
  /** Commits, oldest first: each a full set of files (path -> content). */
  commits: Array<{ sha: string; files: Record<string, string | Uint8Array> }>;
  /** Branches and tags -> commit sha; `main` -> the last commit when absent. */
  refs?: Record<string, string>;
  /** Only a request with `Authorization: Bearer <token>` may read it. */
  private?: boolean;
}

/** How the server misbehaves for one file (key `<repo id>:<path>`). */
export interface Misbehaviour {
  /** Send this many bytes of the body, then cut the connection; `drops` times (1 by default). */
  dropAfter?: number;
  drops?: number;
  /** Send this many bytes of the body, then nothing more (the connection stays open); once. */
  stallAfter?: number;
  /** Answer every request with the whole file (200), Range or not. */
  ignoreRange?: boolean;
  /** Flip one byte in the middle of what is served. */
  corrupt?: boolean;
  /** List this size in the tree instead of the real one. */
  listedSize?: number;
}

export interface LoggedRequest {
  method: string;
  path: string;
  range: string | undefined;
  authorization: string | undefined;
  /** `<repo id>:<path>` when the request was answered with the file's bytes. */
  served?: string;
}

export interface FakeHub {
  url: string;
  requests: LoggedRequest[];
  misbehave: Map<string, Misbehaviour>;
  /** Requests answered with file bytes (resolve, or the CDN for LFS files), optionally of one `<repo id>:<path>`. */
  downloads(key?: string): LoggedRequest[];
  close(): Promise<void>;
}

const isLfs = (path: string) => /\.(safetensors|bin|parquet)$/.test(path);
export const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
export const gitSha1 = (data: Uint8Array) => createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
const bytes = (content: string | Uint8Array) => (typeof content === 'string' ? Buffer.from(content) : Buffer.from(content));

function lfsPointer(data: Uint8Array): Buffer {
  return Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(data)}\nsize ${data.length}\n`);
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers });
  res.end(JSON.stringify(body));
}

function notFound(res: ServerResponse, code: string, message: string): void {
  json(res, 404, { error: message }, { 'x-error-code': code, 'x-error-message': message });
}

export async function startFakeHub(repos: FakeRepo[], options: { token?: string } = {}): Promise<FakeHub> {
  const requests: LoggedRequest[] = [];
  const misbehave = new Map<string, Misbehaviour>();
  const dropped = new Map<string, number>();
  const stalled = new Set<string>();
  /** The LFS content with this sha256, from any commit of any repo (commits may be added while it runs). */
  const cdnObject = (sha: string) => {
    for (const repo of repos) for (const c of repo.commits) for (const [path, content] of Object.entries(c.files)) if (isLfs(path) && sha256(bytes(content)) === sha) return { key: `${repo.id}:${path}`, data: bytes(content) };
    return undefined;
  };

  const find = (type: string, id: string) => repos.find((r) => `${r.type}s` === type && r.id === id);
  const commitOf = (repo: FakeRepo, revision: string) => {
    const sha = repo.refs?.[revision] ?? (revision === 'main' ? repo.commits.at(-1)!.sha : revision);
    return repo.commits.find((c) => c.sha === sha);
  };

  /** Serves `data` honouring Range, unless told to misbehave. */
  function serveBytes(req: IncomingMessage, res: ServerResponse, logged: LoggedRequest, key: string, content: Buffer, headers: Record<string, string>): void {
    logged.served = key;
    const m = misbehave.get(key) ?? {};
    let data = content;
    if (m.corrupt) {
      data = Buffer.from(content);
      data[data.length >> 1]! ^= 0xff;
    }
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const start = range && !m.ignoreRange ? Number(range[1]) : 0;
    if (start > data.length) {
      res.writeHead(416, { 'content-range': `bytes */${data.length}` });
      return void res.end();
    }
    const body = data.subarray(start);
    res.writeHead(range && !m.ignoreRange ? 206 : 200, {
      ...headers,
      'accept-ranges': 'bytes',
      'content-length': String(body.length),
      ...(range && !m.ignoreRange && { 'content-range': `bytes ${start}-${data.length - 1}/${data.length}` }),
    });
    if (m.stallAfter !== undefined && !stalled.has(key)) {
      stalled.add(key);
      return void res.write(body.subarray(0, m.stallAfter));
    }
    const drops = dropped.get(key) ?? 0;
    if (m.dropAfter !== undefined && drops < (m.drops ?? 1)) {
      dropped.set(key, drops + 1);
      // Part of a body under a full Content-Length, then the connection goes: what a reset proxy does. The
      // pause lets the client read what was sent (a stream that errors drops the chunks still queued in it).
      res.write(body.subarray(0, m.dropAfter), () => setTimeout(() => res.socket?.destroy(), 250));
      return;
    }
    res.end(body);
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://hub');
    const path = decodeURIComponent(url.pathname);
    const logged: LoggedRequest = { method: req.method ?? 'GET', path: url.pathname, range: req.headers.range, authorization: req.headers.authorization };
    requests.push(logged);
    const authorised = (repo: FakeRepo) => !repo.private || req.headers.authorization === `Bearer ${options.token}`;
    const unauthorised = () => json(res, 401, { error: 'Invalid credentials in Authorization header' });

    const api = /^\/api\/(models|datasets)\/(.+?)\/(revision|tree)\/([^/]+)(?:\/(.*))?$/.exec(path);
    if (api) {
      const [, type, id, kind, revision] = api as unknown as [string, string, string, string, string];
      const repo = find(type, id);
      if (!repo) return notFound(res, 'RepoNotFound', `Repository not found`);
      if (!authorised(repo)) return unauthorised();
      const commit = commitOf(repo, revision);
      if (!commit) return notFound(res, 'RevisionNotFound', `Invalid rev id: ${revision}`);
      if (kind === 'revision') {
        return json(res, 200, { _id: `id-${id}`, id, sha: commit.sha, private: !!repo.private, gated: false, downloads: 0, likes: 0, lastModified: '2026-01-01T00:00:00.000Z', siblings: Object.keys(commit.files).map((rfilename) => ({ rfilename })) });
      }
      const entries: unknown[] = [];
      const dirs = new Set<string>();
      for (const [p, content] of Object.entries(commit.files)) {
        const parts = p.split('/');
        for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
        const data = bytes(content);
        const listedSize = misbehave.get(`${id}:${p}`)?.listedSize ?? data.length;
        if (isLfs(p)) {
          const pointer = lfsPointer(data);
          entries.push({ type: 'file', oid: gitSha1(pointer), size: listedSize, path: p, lfs: { oid: sha256(data), size: listedSize, pointerSize: pointer.length } });
        } else {
          entries.push({ type: 'file', oid: gitSha1(data), size: listedSize, path: p });
        }
      }
      for (const d of dirs) entries.push({ type: 'directory', oid: gitSha1(Buffer.from(d)), size: 0, path: d });
      return json(res, 200, entries);
    }

    const cdnMatch = /^\/cdn\/([0-9a-f]{64})$/.exec(path);
    if (cdnMatch) {
      const blob = cdnObject(cdnMatch[1]!);
      if (!blob) return notFound(res, 'EntryNotFound', 'no such object');
      return serveBytes(req, res, logged, blob.key, blob.data, { etag: `"cdn-${cdnMatch[1]!.slice(0, 8)}"` });
    }

    const resolve = /^\/(datasets\/)?(.+?)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (resolve) {
      const [, datasets, id, revision, file] = resolve as unknown as [string, string | undefined, string, string, string];
      const repo = find(datasets ? 'datasets' : 'models', id);
      if (!repo) return notFound(res, 'RepoNotFound', 'Repository not found');
      if (!authorised(repo)) return unauthorised();
      const commit = commitOf(repo, revision);
      if (!commit) return notFound(res, 'RevisionNotFound', `Invalid rev id: ${revision}`);
      const content = commit.files[file];
      if (content === undefined) return notFound(res, 'EntryNotFound', `${file} does not exist on "${revision}"`);
      const data = bytes(content);
      if (isLfs(file)) {
        // The hub answers LFS files with a redirect to its CDN, naming the content in x-linked-* headers.
        res.writeHead(302, { location: `/cdn/${sha256(data)}`, 'x-repo-commit': commit.sha, 'x-linked-etag': `"${sha256(data)}"`, 'x-linked-size': String(data.length), etag: `"${gitSha1(lfsPointer(data))}"` });
        return void res.end();
      }
      return serveBytes(req, res, logged, `${id}:${file}`, data, { 'x-repo-commit': commit.sha, etag: `"${gitSha1(data)}"` });
    }
    json(res, 404, { error: `no route ${path}` });
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    misbehave,
    downloads: (key?: string) => requests.filter((r) => r.served !== undefined && (key === undefined || r.served === key)),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A valid safetensors file of `n` f32 values 0, 1, 2... under the name `w`. */
export function safetensors(n: number, name = 'w'): Uint8Array {
  const header = Buffer.from(JSON.stringify({ [name]: { dtype: 'F32', shape: [n], data_offsets: [0, 4 * n] } }));
  const out = Buffer.alloc(8 + header.length + 4 * n);
  out.writeBigUInt64LE(BigInt(header.length), 0);
  header.copy(out, 8);
  for (let i = 0; i < n; i++) out.writeFloatLE(i, 8 + header.length + 4 * i);
  return out;
}
