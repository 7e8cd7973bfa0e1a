//! A minimal browser for login flows over HTTP: a cookie jar per host and port, manual
//! redirects, and the oidc-provider dev interaction's login form. (The Chromium tests
//! drive a real browser; this one keeps the protocol tests fast and exact.)

use std::collections::BTreeMap;

use super::*;

/// One answer as the browser saw it.
pub struct Page {
    pub url: String,
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub body: String,
    /// Every `Set-Cookie` of this answer, as sent.
    pub set_cookies: Vec<String>,
}

/// Cookies by authority (`host:port`), then (path, name), as a browser scopes them.
#[derive(Default, Clone)]
pub struct Browser {
    pub jar: BTreeMap<String, BTreeMap<(String, String), String>>,
    /// Every `Set-Cookie` received, by authority, in order.
    pub set_cookie_log: Vec<(String, String)>,
}

fn authority(url: &str) -> String {
    let parsed = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port_or_known_default().unwrap()
    )
}

impl Browser {
    /// The cookie `name` held for `url`'s host and port (any path).
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let cookies = self.jar.get(&authority(url))?;
        cookies
            .iter()
            .find(|((_, n), _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// The names of the cookies held for `url`'s host and port.
    pub fn cookie_names(&self, url: &str) -> Vec<String> {
        self.jar
            .get(&authority(url))
            .map(|c| c.keys().map(|(_, n)| n.clone()).collect())
            .unwrap_or_default()
    }

    fn cookie_header(&self, url: &str) -> Option<String> {
        let cookies = self.jar.get(&authority(url))?;
        let path = url::Url::parse(url).unwrap().path().to_string();
        let sent: Vec<String> = cookies
            .iter()
            .filter(|((scope, _), _)| {
                path == *scope
                    || path.starts_with(&format!("{}/", scope.trim_end_matches('/')))
                    || scope == "/"
            })
            .map(|((_, k), v)| format!("{k}={v}"))
            .collect();
        (!sent.is_empty()).then(|| sent.join("; "))
    }

    /// Sends one request with the jar's cookies; keeps what it sets.
    pub async fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        let client = test_client();
        let mut req = client.request(
            awc::http::Method::from_bytes(method.as_bytes()).unwrap(),
            url,
        );
        if let Some(cookies) = self.cookie_header(url) {
            req = req.insert_header(("cookie", cookies));
        }
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut res = match form {
            Some(form) => req.send_form(&form).await.unwrap(),
            None => req.send().await.unwrap(),
        };
        let body = String::from_utf8_lossy(&res.body().limit(1 << 20).await.unwrap()).to_string();
        let set_cookies: Vec<String> = res
            .headers()
            .get_all("set-cookie")
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for line in &set_cookies {
            self.set_cookie_log.push((authority(url), line.clone()));
        }
        let jar = self.jar.entry(authority(url)).or_default();
        for line in &set_cookies {
            let parsed = cookie::Cookie::parse(line.clone()).unwrap();
            let gone = parsed
                .max_age()
                .is_some_and(|a| a.is_zero() || a.is_negative())
                || parsed
                    .expires_datetime()
                    .is_some_and(|t| t < cookie::time::OffsetDateTime::now_utc());
            let key = (
                parsed.path().unwrap_or("/").to_string(),
                parsed.name().to_string(),
            );
            if gone || parsed.value().is_empty() {
                jar.remove(&key);
            } else {
                jar.insert(key, parsed.value().to_string());
            }
        }
        Page {
            url: url.to_string(),
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body,
            set_cookies,
        }
    }

    /// GETs `url` and follows redirects (at most 20); the last answer.
    pub async fn navigate(&mut self, url: &str) -> Page {
        let mut url = url.to_string();
        for _ in 0..20 {
            let page = self.send("GET", &url, &[], None).await;
            if !(300..400).contains(&page.status) {
                return page;
            }
            url = next_url(&page);
        }
        panic!("too many redirects from {url}");
    }

    /// Follows redirects from `page` onward.
    pub async fn follow(&mut self, page: Page) -> Page {
        if (300..400).contains(&page.status) {
            let next = next_url(&page);
            self.navigate(&next).await
        } else {
            page
        }
    }

    /// Completes the AS's login page (oidc-provider's dev interactions: any name and
    /// password) on `page`, and a consent page should one follow; follows the
    /// redirects back.
    pub async fn submit_login(&mut self, page: Page, user: &str) -> Page {
        let mut page = page;
        for _ in 0..3 {
            if !page.url.contains("/interaction/") {
                return page;
            }
            let action = page.url.clone();
            let form: &[(&str, &str)] = if page.body.contains("name=\"login\"") {
                &[("prompt", "login"), ("login", user), ("password", "pw")]
            } else {
                &[("prompt", "consent")]
            };
            let answer = self.send("POST", &action, &[], Some(form)).await;
            page = self.follow(answer).await;
        }
        page
    }
}

/// The absolute URL a redirect points to.
pub fn next_url(page: &Page) -> String {
    let location = page.headers.get("location").unwrap().to_str().unwrap();
    url::Url::parse(&page.url)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}
