//! `/auth/signup`, `/auth/signin`, `/auth/signout`: forms that post to the auth API and hand
//! the session cookie it sets to the browser.

use std::sync::Arc;

use crate::form::PageForm;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use contract::api::SessionUser;
use minijinja::context;
use minijinja::value::Serde;
use serde::Deserialize;

use super::Web;
use super::{FormErrors, PageResult, form_refusal, page};
use crate::api::SetCookies;
use crate::pages::{encode_query_value, safe_next};
use crate::visitor::Visitor;

#[derive(Debug, Default, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CredentialsForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

#[derive(Clone, Copy)]
enum Kind {
    SignUp,
    SignIn,
}

impl Kind {
    fn heading(self) -> &'static str {
        match self {
            Self::SignUp => "Sign Up",
            Self::SignIn => "Sign In",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::SignUp => Self::SignIn,
            Self::SignIn => Self::SignUp,
        }
    }

    /// This form's URL, coming back to `next` afterwards.
    fn with_next(self, next: &str) -> String {
        if next == "/" {
            self.action().to_owned()
        } else {
            format!("{}?next={}", self.action(), encode_query_value(next))
        }
    }

    fn action(self) -> &'static str {
        match self {
            Self::SignUp => "/auth/signup",
            Self::SignIn => "/auth/signin",
        }
    }
}

fn credentials_page(
    kind: Kind,
    status: StatusCode,
    visitor: &Visitor,
    user: Option<&SessionUser>,
    email: &str,
    next: &str,
    errors: FormErrors,
) -> Response {
    let ctx = context! {
        heading => kind.heading(),
        action => kind.action(),
        signing_up => matches!(kind, Kind::SignUp),
        email,
        next => if next == "/" { "" } else { next },
        other_url => kind.other().with_next(next),
        errors => Serde(&errors.fields),
        alerts => errors.general,
    };
    page(status, "auth.html", visitor, user, ctx)
}

pub async fn show_sign_up(State(web): State<Arc<Web>>, visitor: Visitor, Query(query): Query<NextQuery>) -> PageResult {
    show(Kind::SignUp, &web, &visitor, query).await
}

pub async fn show_sign_in(State(web): State<Arc<Web>>, visitor: Visitor, Query(query): Query<NextQuery>) -> PageResult {
    show(Kind::SignIn, &web, &visitor, query).await
}

async fn show(kind: Kind, web: &Web, visitor: &Visitor, query: NextQuery) -> PageResult {
    let user = web.api.current_user(visitor).await?;
    let next = safe_next(query.next.as_deref());
    Ok(credentials_page(kind, StatusCode::OK, visitor, user.as_ref(), "", &next, FormErrors::default()))
}

pub async fn sign_up(
    State(web): State<Arc<Web>>,
    visitor: Visitor,
    PageForm(form): PageForm<CredentialsForm>,
) -> PageResult {
    submit(Kind::SignUp, &web, &visitor, form).await
}

pub async fn sign_in(
    State(web): State<Arc<Web>>,
    visitor: Visitor,
    PageForm(form): PageForm<CredentialsForm>,
) -> PageResult {
    submit(Kind::SignIn, &web, &visitor, form).await
}

async fn submit(kind: Kind, web: &Web, visitor: &Visitor, form: CredentialsForm) -> PageResult {
    let next = safe_next(form.next.as_deref());
    let email = form.email.trim();
    let result = match kind {
        Kind::SignUp => web.api.sign_up(visitor, email, &form.password).await,
        Kind::SignIn => web.api.sign_in(visitor, email, &form.password).await,
    };
    match result {
        Ok(cookies) => Ok(redirect_with_cookies(&next, cookies)),
        Err(failure) => {
            let (status, items) = form_refusal(failure)?;
            let user = web.api.current_user(visitor).await?;
            let errors = FormErrors::from_api(&items, &["email", "password"]);
            Ok(credentials_page(kind, status, visitor, user.as_ref(), email, &next, errors))
        }
    }
}

/// `GET /auth/signout`: a button that signs out (signing out is a POST, so another site
/// cannot sign a visitor out with a link or an image).
pub async fn show_sign_out(State(web): State<Arc<Web>>, visitor: Visitor) -> PageResult {
    let Some(user) = web.api.current_user(&visitor).await? else {
        return Ok(Redirect::to("/").into_response());
    };
    Ok(page(StatusCode::OK, "signout.html", &visitor, Some(&user), context! {}))
}

pub async fn sign_out(State(web): State<Arc<Web>>, visitor: Visitor) -> PageResult {
    let cookies = web.api.sign_out(&visitor).await?;
    Ok(redirect_with_cookies("/", cookies))
}

fn redirect_with_cookies(to: &str, SetCookies(cookies): SetCookies) -> Response {
    let mut response = Redirect::to(to).into_response();
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}
