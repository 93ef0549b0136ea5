/** What went wrong with the hub, for callers that act on it (the CLI's exit code, a fallback to the cache). */
export type HubErrorCode =
  | 'invalid' // a repo id or revision that cannot be one
  | 'unauthorized' // 401/403: no or wrong token, or a gated repo whose licence is not accepted
  | 'not-found' // 404: repo, revision or file
  | 'network' // the endpoint cannot be reached, or dropped the connection more often than we retry
  | 'http' // any other HTTP failure
  | 'offline' // HF_HUB_OFFLINE=1 and the cache lacks what was asked
  | 'integrity' // the bytes do not match the size or hash the hub lists
  | 'unusable'; // the repo lacks what the engine can load (pickle-only weights, no config.json, no data files)

/** A hub download failure. The message is one line naming the repo (and file) and what to do. */
export class HubError extends Error {
  override readonly name = 'HubError';
  constructor(
    readonly code: HubErrorCode,
    message: string,
  ) {
    super(message);
  }
}
